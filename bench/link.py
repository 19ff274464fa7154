"""Link fetch (issue 6, item 1): Veil's ``GET /l/<token>/image`` against plain aiohttp serving
the same bytes from memory and nginx serving the same file statically.

Three servers, each a separate process on 127.0.0.1, load from wrk (1 thread, 50 connections):
  * Veil: ``bot.web.create_app`` over a real Veil; every request
    checks the token (selector lookup, constant-time hash compare), counts a view in a write
    transaction, unwraps the keys, reads and decrypts the blob (AES-GCM), re-checks the image
    and logs the view. The link has no view limit (a limit would be spent by the run).
  * aiohttp: one handler returning the decrypted bytes held in memory, same content type.
  * nginx (Debian's): one worker process, sendfile, the decrypted file from a temp root.
The failure throttle stays on but with a burst of 10,000: its default (20 failed lookups per
address, each request taking a unit up front) answers most of 50 concurrent valid requests from
one address with 429, which is measured separately and reported as a note.
No access logs anywhere. Runs are interleaved (order rotated), median of 5 runs of 5 s each.
Server CPU per request is (utime + stime) of the server process (all threads; nginx: its
worker) over the run, divided by the requests served. nginx and wrk are installed with apt-get
if missing (root only; skipped otherwise).

Then the same load on ``python -m bot web --workers N`` (N processes on one port, SO_REUSEPORT;
its default, database-backed throttle), for each N in ``--workers`` (default 1,2), each run
next to an aiohttp run: req/s against one worker's and against aiohttp's. wrk itself takes
one core of the machine's.

    python -m bench.link [--quick] [--workers 1,2,4]
    python -m bench.link --core    # in-process only: the CPU of each step of a fetch
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import CACHE, ROOT, Figure, Report, cpu_seconds, header, median, run_main

BAR_VS_AIOHTTP = 0.35  # issue 12 (issue 6 asked 0.5; see docs/PERFORMANCE.md)
BAR_VS_NGINX = 0.4
BAR_P99_MS = 20.0
CONNECTIONS = 50
# A person's browser: requests without a user agent are treated as link-preview fetchers,
# which are answered without the image and spend no view.
BROWSER = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/126.0 Safari/537.36")


# Servers ---------------------------------------------------------------------------------------

async def serve_veil(data: str, burst: str = "default") -> None:
    import logging

    from bot.core.veil import Veil
    from bot.web import RateLimit, create_app, start_web
    from bot.web.app import settle_for_serving

    logging.basicConfig(level=logging.WARNING)
    veil = await Veil.open(data)
    if burst == "default":
        app = create_app(veil, public_url="http://127.0.0.1")
    else:
        app = create_app(veil, public_url="http://127.0.0.1", rate_limit=RateLimit(int(burst)))
    server = await start_web(app, "127.0.0.1", 0)
    settle_for_serving()  # as `python -m bot web` does once it listens
    await _announce_and_wait(server.port)
    await server.stop()
    await veil.close()


async def serve_aiohttp(body_file: str, mime: str) -> None:
    from aiohttp import web

    body = Path(body_file).read_bytes()  # noqa: ASYNC240 (once, before serving)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=mime)

    app = web.Application()
    app.router.add_get("/l/{token}/image", image)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    await _announce_and_wait(runner.addresses[0][1])
    await runner.cleanup()


async def _announce_and_wait(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {port}", flush=True)
    await stop.wait()


class Server:
    """A server process: ``port``, ``cpu_pid`` (whose CPU time is counted), ``stop()``."""

    def __init__(self, name: str, cmd: list[str], *, port: int | None = None,
                 worker: bool = False, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        if port is None:
            line = self.proc.stdout.readline()
            if not line.startswith("PORT "):
                self.stop()
                raise RuntimeError(f"{name} server did not start")
            port = int(line.split()[1])
        self.port = port
        self.cpu_pid = self.proc.pid
        if worker:  # nginx: the master forks one worker, which does the serving
            self.cpu_pid = _wait_child(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(200):
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise RuntimeError("nginx started no worker")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(root: Path, port: int, mime: str, filename: str) -> Server:
    conf = root / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    types {{ {mime} {filename.rsplit('.', 1)[1]}; }}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location /l/ {{ rewrite ^ /{filename} break; }}
    }}
}}
""")
    (root / "tmp").mkdir(exist_ok=True)
    server = Server("nginx", ["nginx", "-c", str(conf), "-p", str(root), "-g", "daemon off;"],
                    port=port, worker=True)
    _wait_listening(port)
    return server


def _wait_listening(port: int, seconds: float = 60.0) -> None:
    # A minute: `python -m bot web` took over the four seconds this used to allow to import
    # and open Veil on a machine at a load average of 15.
    import socket

    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


# Load ------------------------------------------------------------------------------------------

def wrk(url: str, seconds: float, connections: int = CONNECTIONS) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "--timeout", "5s", "-H", f"User-Agent: {BROWSER}", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)
                                               .group(1)),
            "p99_ms": float(p99.group(1)) * scale, "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else ""}


def interleaved_rounds(servers: dict[str, Server], url: dict[str, str], runs: int,
                       seconds: float) -> dict[str, list[dict]]:
    """wrk against each server in turn, the order rotated every round so that no server always
    runs first on a warm (or a loaded) machine; each result carries the server's CPU time per
    request, read from its process."""
    results: dict[str, list[dict]] = {name: [] for name in servers}
    names = list(servers)
    for r in range(runs):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            before = cpu_seconds(servers[name].cpu_pid)
            result = wrk(url[name], seconds)
            result["cpu_us"] = ((cpu_seconds(servers[name].cpu_pid) - before)
                                / max(1, result["requests"]) * 1e6)
            results[name].append(result)
    return results


def ensure_tools(report: Report) -> str | None:
    """None when nginx and wrk are there (installing them if we may), else why not."""
    if shutil.which("nginx") and shutil.which("wrk"):
        return None
    if os.geteuid() != 0:
        return "nginx or wrk missing and not root: apt-get install nginx wrk"
    report.note("installing nginx and wrk with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"], env=env,
                   capture_output=True, timeout=600)
    if not (shutil.which("nginx") and shutil.which("wrk")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "wrk"], env=env,
                       capture_output=True, timeout=600)
    if shutil.which("nginx") and shutil.which("wrk"):
        return None
    return "apt-get could not install nginx and wrk"


async def prepare(folder: Path) -> tuple[str, bytes, str]:
    """A data folder with one stored image and a link without a view limit:
    (token, the image's delivered bytes, mime)."""
    from bench._images import small_jpeg
    from bot.core.models import Viewer
    from bot.core.veil import Veil

    owner = Viewer(1001)
    async with await Veil.open(folder) as veil:
        image = await veil.images.create(owner.user_id, small_jpeg(), guild_id=None,
                                         source="upload")
        new = await veil.links.create(image.public_id, owner, expires_in=6 * 86400.0)
        content = await veil.images.decrypt_unchecked(image)
    return new.token, content.data, image.mime


def main(args) -> Report:
    import logging

    header("link fetch: Veil GET /l/<token>/image vs aiohttp from memory vs nginx static")
    report = Report("link")
    logging.getLogger("bot.core.veil").setLevel(logging.ERROR)
    try:
        import bot.web  # noqa: F401
        from bot.web import create_app  # noqa: F401
    except ImportError as exc:
        report.add(Figure("link fetch", None, BAR_VS_AIOHTTP, ">=",
                          skipped=f"bot.web.create_app not importable yet ({exc})"))
        return report
    why = ensure_tools(report)
    if why is not None:
        report.add(Figure("link fetch", None, BAR_VS_AIOHTTP, ">=", skipped=why))
        return report

    runs, seconds = (3, 2) if args.quick else (5, 5)
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.core:
        root = Path(tempfile.mkdtemp(prefix="link-core-", dir=CACHE))
        try:
            token, _, _ = asyncio.run(prepare(root / "data"))
            for line in asyncio.run(core_breakdown(root / "data", token)):
                report.note(line)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return report
    root = Path(tempfile.mkdtemp(prefix="link-", dir=CACHE))
    servers: dict[str, Server] = {}
    scaling: dict[int, dict] = {}
    try:
        token, body, mime = asyncio.run(prepare(root / "data"))
        filename = "image." + ("jpg" if mime == "image/jpeg" else "png")
        root.chmod(0o755)  # nginx's worker runs as www-data
        (root / "www").mkdir(mode=0o755)
        (root / "www" / filename).write_bytes(body)
        (root / "body").write_bytes(body)
        report.note(f"payload: {len(body) / 1024:.0f} KB {mime}; wrk -t1 -c{CONNECTIONS} "
                    f"-d{seconds}s, {runs} interleaved runs per server")
        py = [sys.executable, "-m", "bench.link", "--serve"]
        servers["veil"] = Server("veil", py + ["veil", str(root / "data"), "10000"])
        servers["aiohttp"] = Server("aiohttp", py + ["aiohttp", str(root / "body"), mime])
        servers["nginx"] = start_nginx(root, _free_port(), mime, filename)
        url = {name: f"http://127.0.0.1:{s.port}/l/{token}/image" for name, s in
               servers.items()}
        for name in servers:  # warm-up, and check the bytes served are the same everywhere
            got = _get(url[name])
            if got != body:
                raise RuntimeError(f"{name} served {len(got)} bytes, expected {len(body)}")
            wrk(url[name], 1)
        results = interleaved_rounds(servers, url, runs, seconds)
        servers["veil"].stop()
        scaling = _scaling(report, root / "data", token, servers["aiohttp"],
                           [int(n) for n in args.workers.split(",")], runs, seconds)
        views = asyncio.run(_views(root / "data"))
        default = Server("veil", py + ["veil", str(root / "data"), "default"])
        servers["veil (default limit)"] = default
        check = wrk(f"http://127.0.0.1:{default.port}/l/{token}/image", seconds)
        report.note(f"with the default rate limit, {check['non2xx']:,} of {check['requests']:,} "
                    f"valid requests from one address at {CONNECTIONS} connections got a "
                    "non-2xx answer (429)")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    summary = {}
    for name, rs in results.items():
        if not rs:
            continue
        summary[name] = {k: median([r[k] for r in rs]) for k in ("rps", "p99_ms", "cpu_us")}
        bad = sum(r["non2xx"] for r in rs)
        report.note(f"{name:8s} {summary[name]['rps']:8.0f} req/s, p99 "
                    f"{summary[name]['p99_ms']:6.1f} ms, server CPU "
                    f"{summary[name]['cpu_us']:6.0f} µs/request"
                    + (f", NON-2xx responses: {bad}" if bad else "")
                    + (f", socket errors: {rs[-1]['socket_errors']}"
                       if rs[-1]["socket_errors"] else ""))
    report.note(f"views counted by Veil during the runs: {views:,}")
    v, a, n = summary["veil"], summary["aiohttp"], summary["nginx"]
    report.add(Figure("link fetch: Veil vs aiohttp-from-memory (req/s)", v["rps"] / a["rps"],
                      BAR_VS_AIOHTTP, ">=", detail="aiohttp"))
    report.add(Figure("link fetch: Veil vs nginx static (req/s)", v["rps"] / n["rps"],
                      BAR_VS_NGINX, ">=", detail="nginx"))
    report.add(Figure(f"link fetch: Veil p99 at {CONNECTIONS} connections", v["p99_ms"],
                      BAR_P99_MS, "<", "ms"))
    base = scaling.get(1)
    for count, f in scaling.items():
        scale = f" = {f['rps'] / base['rps']:.2f}x one worker" if base and count != 1 else ""
        report.add(Figure(f"link fetch: bot web --workers {count} vs aiohttp-from-memory "
                          "(req/s)", f["rps"] / f["aiohttp"], BAR_VS_AIOHTTP, ">=",
                          detail=f"aiohttp{scale}"))
    report.note(f"server CPU per request: Veil {v['cpu_us']:.0f} µs, aiohttp {a['cpu_us']:.0f} "
                f"µs, nginx {n['cpu_us']:.0f} µs (Veil = {v['cpu_us'] / a['cpu_us']:.1f}x "
                "aiohttp)")
    return report


def _scaling(report: Report, data: Path, token: str, aiohttp: Server, counts: list[int],
             runs: int, seconds: float) -> dict[int, dict]:
    """``python -m bot web --workers N`` for each N, each wrk run next to one on aiohttp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    found: dict[int, dict] = {}
    for n in counts:
        port = _free_port()
        server = Server(f"web x{n}", [sys.executable, "-m", "bot", "web", "--workers", str(n)],
                        port=port, env=env | {"VEIL_DATA_DIR": str(data),
                                              "VEIL_WEB_PORT": str(port),
                                              "VEIL_LOG_LEVEL": "WARNING"})
        try:
            _wait_workers(server.proc.pid, n)
            _wait_listening(port)
            url = f"http://127.0.0.1:{port}/l/{token}/image"
            wrk(url, 1)
            mine, theirs = [], []
            for _ in range(runs):
                pids = _family(server.proc.pid)
                before = sum(cpu_seconds(p) for p in pids)
                result = wrk(url, seconds)
                result["cpu_us"] = ((sum(cpu_seconds(p) for p in pids) - before)
                                    / max(1, result["requests"]) * 1e6)
                mine.append(result)
                theirs.append(wrk(f"http://127.0.0.1:{aiohttp.port}/l/{token}/image", seconds))
        finally:
            server.stop()
        found[n] = {k: median([r[k] for r in mine]) for k in ("rps", "p99_ms", "cpu_us")}
        found[n]["aiohttp"] = median([r["rps"] for r in theirs])
        bad = sum(r["non2xx"] for r in mine)
        f = found[n]
        report.note(f"bot web --workers {n}: {f['rps']:8.0f} req/s, p99 {f['p99_ms']:6.1f} ms, "
                    f"server CPU {f['cpu_us']:6.0f} µs/request; aiohttp beside it "
                    f"{f['aiohttp']:.0f} req/s" + (f", NON-2xx responses: {bad}" if bad else ""))
    return found


def _family(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + [int(c) for c in children.read_text().split()]


def _wait_workers(pid: int, n: int) -> None:
    for _ in range(600):
        if len(_family(pid)) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"bot web did not start {n} processes")


def _get(url: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": BROWSER})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


async def _views(data: Path) -> int:
    from bot.core.veil import Veil

    async with await Veil.open(data) as veil:
        return await veil.ctx.db.fetchval("SELECT coalesce(sum(views), 0) FROM links")


# In-process: where a fetch's CPU goes, without HTTP ------------------------------------------

async def core_breakdown(folder: Path, token: str, rounds: int = 400,
                         seconds: float = 3.0) -> list[str]:
    """CPU time (``time.process_time``, all threads) of each step of a link fetch, run alone
    ``rounds`` times on one Veil, and of 50 fetches at once (as wrk's 50 connections make
    them) in the order Veil uses (count, then read and decrypt) and in the order it used
    before (read and decrypt, then count: each fetch holds its image across the group
    commit's wait). The view counts spend views of the bench's link (it has no limit)."""
    import gc

    from bot.core.blobs import image_key, read_full_part_sync
    from bot.core.crypto import image_aad, unseal
    from bot.core.veil import Veil

    async def cpu(step, n: int = rounds) -> float:
        for _ in range(20):
            await step()
        started = time.process_time()
        for _ in range(n):
            await step()
        return (time.process_time() - started) / n * 1e6

    async def per_fetch(fetch) -> float:
        done = 0
        started, until = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < until:
            for result in await asyncio.gather(*(fetch() for _ in range(CONNECTIONS))):
                assert result is not None
            done += CONNECTIONS
        return (time.process_time() - started) / done * 1e6

    async with await Veil.open(folder) as veil:
        links, images = veil.links, veil.images
        target = await links.resolve(token)
        assert target is not None and target.keys is not None
        image, keys = target.image, target.keys

        async def resolve() -> None:
            await links.resolve(token)

        async def unwrap() -> None:
            owner_key = veil.ctx.keys.unwrap_owner_key(image.owner_id, keys.owner_key,
                                                       keys.master_key_id)
            unseal(owner_key, keys.image_key, image_aad(image.public_id, "key"))

        async def read() -> None:
            read_full_part_sync(veil.ctx.blobs, image.blob_name)

        async def read_fresh() -> None:  # how the read was made before: a new buffer each
            veil.ctx.blobs.get_sync(image_key(image.blob_name))

        data_key = unseal(veil.ctx.keys.unwrap_owner_key(image.owner_id, keys.owner_key,
                                                         keys.master_key_id),
                          keys.image_key, image_aad(image.public_id, "key"))

        async def decrypt() -> None:
            unseal(data_key, read_full_part_sync(veil.ctx.blobs, image.blob_name),
                   image_aad(image.public_id, "full"))

        async def count() -> None:
            await links._count_view(target, "Chrome")

        async def fetch():
            return await links.fetch(token, agent="Chrome")

        async def orders() -> str:
            counted_first = [await per_fetch(fetch), await per_fetch(fetch)]
            decrypted_first = [await per_fetch(fetch_decrypting_first),
                               await per_fetch(fetch_decrypting_first)]
            counted_first.append(await per_fetch(fetch))
            return (f"{CONNECTIONS} fetches at once, CPU per fetch: "
                    f"{median(counted_first):.0f} µs counting first (Veil), "
                    f"{median(decrypted_first):.0f} µs decrypting first (before)")

        async def fetch_decrypting_first():
            found = await links.resolve(token)
            content = await images.decrypt_for_link(found.image, found.keys)
            return content if await links._count_view(found, "Chrome") else None

        # The pause a full collection makes with a link server's start-up objects, before
        # and after settle_for_serving (what `python -m bot web` does once it listens:
        # gc.freeze(), and glibc keeping freed heap).
        from bot.web import create_app
        from bot.web.app import settle_for_serving

        app = create_app(veil, public_url="http://127.0.0.1")
        pauses = []
        for _ in range(3):
            started = time.process_time()
            gc.collect()
            pauses.append((time.process_time() - started) * 1e3)
        tracked = len(gc.get_objects())
        fresh, trimmed = await cpu(read_fresh), await cpu(decrypt)
        orders_trimmed = await orders()
        settle_for_serving()
        started = time.process_time()
        gc.collect()
        frozen = (time.process_time() - started) * 1e3
        del app
        lines = [f"a full garbage collection over a link server's {tracked:,} start-up "
                 f"objects: {median(pauses):.1f} ms of CPU; after gc.freeze(): {frozen:.2f} ms",
                 f"with glibc's heap trimmed at 128 KB (as before): blob read into a new buffer "
                 f"{fresh:.0f} µs; blob read + AES-GCM {trimmed:.0f} µs; {orders_trimmed}",
                 f"keeping 32 MB of freed heap (settle_for_serving, as `bot web` does now; "
                 f"the figures below too): blob read + AES-GCM {await cpu(decrypt):.0f} µs"]
        steps = {"token lookup (resolve)": resolve, "key unwrap (2 x AES-GCM)": unwrap,
                 "blob read (page cache, reused buffer)": read,
                 "view count alone (a transaction)": count, "whole fetch alone": fetch}
        parts = [f"{name} {await cpu(step):.0f} µs" for name, step in steps.items()]
        lines.append(f"in-process CPU per step, {rounds} runs each: " + "; ".join(parts))
        lines.append(await orders())
    return lines


def _extra(parser) -> None:
    parser.add_argument("--serve", nargs="+", help="(internal) run one server")
    parser.add_argument("--workers", default="1,2",
                        help="link-server process counts to measure (default 1,2)")
    parser.add_argument("--core", action="store_true",
                        help="only the in-process CPU breakdown of a fetch (no HTTP, no wrk)")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        kind, *rest = sys.argv[sys.argv.index("--serve") + 1:]
        if kind == "veil":
            asyncio.run(serve_veil(*rest))
        else:
            asyncio.run(serve_aiohttp(rest[0], rest[1]))
        sys.exit(0)
    run_main(main, __doc__.splitlines()[0], _extra)
