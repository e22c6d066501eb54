"""common.tune_allocator: on glibc, freed tensor memory stays with the process for the next
tensors (no mmap / munmap per activation); the user's own choice is left alone."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="tunes glibc's malloc only")

# In a fresh interpreter (the setting is per process): tune, then allocate and free a 16 MB
# tensor, and read glibc's own counters (mallinfo2, glibc >= 2.33).
PROBE = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
import torch
from common import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
said = tune_allocator()
mmapped = libc.mallinfo2().hblks
x = torch.ones(4 << 20)                       # 16 MB
during = libc.mallinfo2().hblks - mmapped
del x
kept = libc.mallinfo2().fordblks
print(json.dumps({"said": said, "mmapped_during": during, "free_kept": kept}))
"""


def probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MINI_LLM_ALLOCATOR"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True,
                          env={**full, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_freed_tensors_stay_in_the_heap_for_the_next_ones():
    got = probe()
    assert "32 MB" in got["said"] and "MINI_LLM_ALLOCATOR=default" in got["said"]
    assert got["mmapped_during"] == 0                 # the 16 MB came from the heap, not a fresh mmap
    assert got["free_kept"] >= 16 << 20               # and stays there once freed


@pytest.mark.parametrize("env", [{"MINI_LLM_ALLOCATOR": "default"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_choice_is_left_alone(env):
    assert probe(**env)["said"] == ""
