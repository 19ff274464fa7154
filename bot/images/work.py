"""Where image work runs: a few threads of its own, and a short queue in front of them.

Sanitizing a 40-megapixel upload holds about 165 MB at its peak (120 MB of decoded pixels,
measured by bench/uploads.py) and takes one to two seconds of CPU. In the loop's default
executor (as many threads as cores + 4, shared with decryption, blob I/O and aiohttp's DNS
lookups) ten such uploads at once ran six at a time and took the process to 1.1 GB, while
everything else queued behind them. Here at most
``workers`` images are worked on at once (one per core: more threads would only share the
same cores, and each holds its pixels while it waits for one); up to ``max_waiting`` more wait
their turn in order, and any beyond that are refused at once with a message saying to send
again shortly, rather than holding their bytes in a queue without end.

Threads, not processes: Pillow and littlecms release the GIL while they work on pixels, so
threads use every core without copying each image across a process boundary.
"""

import asyncio
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from PIL import Image

from bot.core.errors import RateLimited

T = TypeVar("T")

BUSY: Final = "Veil is busy cleaning other images right now. Send this one again in a minute."
# One thread per core, but no more than this: each worker may hold a 40-megapixel image
# (about 165 MB at its peak), so a big machine still stays under a gigabyte.
_MOST_WORKERS: Final = 4
# A waiting job holds only its input bytes (at most the 25 MB upload limit).
DEFAULT_MAX_WAITING: Final = 16


# glibc's malloc serves allocations above a threshold with their own mmap, returned to the
# system when freed, and below it from per-thread heaps that keep freed memory for reuse. The
# threshold starts at 128 KB but rises to the size of any such block that is freed, so after
# the first image Pillow's 16 MB pixel blocks come from the workers' heaps, where they stay and
# fragment: ten 40-megapixel uploads then peaked at 537 MB, once at 1,111 MB (measured, bench/
# uploads.py). A fixed threshold keeps image memory going back when an image is done (473 MB,
# steady). 1 MB is far above what the rest of the bot allocates at a time.
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD_BYTES: Final = 1024 * 1024


def return_image_memory_when_freed() -> None:
    """Fix glibc's mmap threshold for the whole process (see above); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc (musl has no mallopt): its allocator returns large blocks anyway


# Pillow frees an image's pixels inside the image object's deallocation, which runs holding the
# GIL: for a 40-megapixel image that is 160 MB of pages given back to the system, 15 to 56 ms
# during which no other thread, the event loop included, can run (measured on this 2-core
# machine, more when the other core is busy). Instead, Pillow is told to keep freed
# blocks in its own cache, which makes the free a matter of microseconds; the next image reuses
# them (no new mapping, no page faults), and once the pool has no job left a worker gives them
# back one small block at a time (return_pixel_memory), so that the loop can take the GIL
# between two blocks. Giving them back after every job instead measured worse: an unmap
# sometimes waits tens of milliseconds for the other core (a TLB flush on a busy virtual
# machine), holding the GIL, so the fewer unmaps while uploads are in flight the better.
# 2 MB blocks take under a millisecond each to give back here (Pillow's default is 16 MB); the
# cache may hold up to 1024 of them, more than the workers ever have in use at once. The cache
# is Pillow's, for the whole process: images freed elsewhere (a watermark, a generator) wait
# there too, for the next image to reuse or the next time the workers go idle.
_PIXEL_BLOCK_BYTES: Final = 2 * 1024 * 1024
_MOST_CACHED_BLOCKS: Final = 1024


def keep_freed_pixel_blocks() -> None:
    """Let Pillow cache freed pixel blocks (see above); return_pixel_memory empties the cache."""
    Image.core.set_block_size(_PIXEL_BLOCK_BYTES)
    Image.core.set_blocks_max(_MOST_CACHED_BLOCKS)


def return_pixel_memory() -> None:
    """Give every pixel block Pillow has cached back to the system, one block per call.

    Each call holds the GIL only while one block is unmapped; between two calls a thread that
    waits for the GIL gets it. Safe from several threads at once: each call only shrinks the
    cache to one block fewer than it saw.
    """
    while (cached := Image.core.get_stats()["blocks_cached"]) > 0:
        Image.core.clear_cache(cached - 1)


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MOST_WORKERS))


class ImageWork:
    """A bounded pool for CPU-heavy image work, usable from any event loop (and from several).

    Thread-safe and loop-agnostic on purpose: tests, the bot and the CLI each run their own
    loops, and an asyncio.Semaphore would belong to the first loop that used it.
    """

    def __init__(self, workers: int, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        if workers < 1 or max_waiting < 0:
            raise ValueError("at least one worker, and a waiting list of zero or more")
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veil-image")
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        with self._lock:
            return self._admitted

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on a worker thread; RateLimited at once if the queue is full.

        Cancelling the caller before the job starts takes it off the queue, so a user who
        gave up does not cost a worker.
        """
        with self._lock:
            if self._admitted >= self.workers + self.max_waiting:
                raise RateLimited(BUSY)
            self._admitted += 1
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, future: object) -> None:
        with self._lock:
            self._admitted -= 1
            idle = self._admitted == 0
        if future is not None and idle:
            # The jobs' images died with their frames, into Pillow's cache, where the next
            # job reuses them without mapping new memory. Once no job is left, they go back
            # to the system, on a worker, after the caller has its answer.
            try:
                self._executor.submit(return_pixel_memory)
            except RuntimeError:  # the pool is shutting down with the process
                return_pixel_memory()


return_image_memory_when_freed()
keep_freed_pixel_blocks()
IMAGE_WORK: Final = ImageWork(default_workers())
# Each image job makes its thumbnail here while it encodes the full size (pipeline.py): one
# thread per image worker, so a thumbnail never waits for another image's.
THUMBNAIL_WORK: Final = ThreadPoolExecutor(max_workers=IMAGE_WORK.workers,
                                           thread_name_prefix="veil-thumbnail")
