"""Checks of config values that need no owner: ranges, finiteness and paths (a leaf: it imports
nothing of loralab's but its errors). Each part's schema lives with its owner; `loralab.validation`
builds and checks them all."""
