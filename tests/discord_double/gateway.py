"""The gateway websocket: HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeats, RESUME, dispatch.

Frames are sent as text (plain JSON) even though discord.py connects with
``compress=zlib-stream``: its ``received_message`` only decompresses binary frames.
Every connection has one writer task fed by a queue, so events reach the client in the order
they were dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from . import payloads

if TYPE_CHECKING:
    from .server import DiscordDouble

# Opcodes.
DISPATCH = 0
HEARTBEAT = 1
IDENTIFY = 2
PRESENCE_UPDATE = 3
VOICE_STATE_UPDATE = 4
RESUME = 6
RECONNECT = 7
REQUEST_GUILD_MEMBERS = 8
INVALID_SESSION = 9
HELLO = 10
HEARTBEAT_ACK = 11

# Intents.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15


@dataclass
class _Close:
    code: int
    message: bytes = b""


@dataclass
class GatewaySession:
    """One identified session; survives disconnects so the client can RESUME it."""

    id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)
    conn: Connection | None = None
    identified_at: float = field(default_factory=time.monotonic)
    resumes: int = 0
    invalidated: bool = False
    ended: bool = False  # the client closed with 1000/1001 (discord.py's close()): it left

    def has(self, intent: int) -> bool:
        return bool(self.intents & intent)

    @property
    def shard_id(self) -> int:
        return self.shard[0] if self.shard else 0

    @property
    def shard_count(self) -> int:
        return self.shard[1] if self.shard else 1

    def serves(self, guild_id: int | None) -> bool:
        """Whether Discord routes this guild's events here: (guild_id >> 22) % shard_count;
        DMs and other events of no guild go to shard 0."""
        if guild_id is None:
            return self.shard_id == 0
        return (guild_id >> 22) % self.shard_count == self.shard_id


@dataclass
class Connection:
    ws: web.WebSocketResponse
    query: dict[str, str]
    queue: asyncio.Queue[str | _Close | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    session: GatewaySession | None = None
    closed: bool = False
    heartbeats: int = 0

    def send(self, frame: str | _Close) -> None:
        if not self.closed:
            self.queue.put_nowait(frame)


class Gateway:
    def __init__(self, double: DiscordDouble) -> None:
        self.double = double
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[Connection] = []
        self.received: list[dict[str, Any]] = []  # client frames, token redacted
        self.heartbeat_interval_ms = 41250
        self._active: GatewaySession | None = None
        # Several bot processes, each identified for one shard of the same count: events go to
        # the shard that serves their guild, as on Discord.
        self._shards: dict[int, GatewaySession] = {}

    # -- public -------------------------------------------------------------------------------

    @property
    def active_session(self) -> GatewaySession | None:
        session = self._active
        if session is None or session.invalidated:
            return None
        return session

    @property
    def connected(self) -> bool:
        session = self.active_session
        return session is not None and session.conn is not None and not session.conn.closed

    @property
    def shard_sessions(self) -> dict[int, GatewaySession]:
        """The live session of each shard, when bots identified with a shard count above 1."""
        return {i: s for i, s in self._shards.items() if not s.invalidated and not s.ended}

    def session_for(self, data: Any) -> GatewaySession | None:
        """The session an event goes to: the active one, or with several shards connected the
        one serving the event's guild (the active one if that shard's bot has left)."""
        shards = self.shard_sessions
        if not shards:
            return self.active_session
        guild_id = data.get("guild_id") if isinstance(data, dict) else None
        for session in shards.values():
            if session.serves(None if guild_id is None else int(guild_id)):
                return session
        return self.active_session

    def dispatch(self, event: str, data: Any, *, session: GatewaySession | None = None) -> bool:
        """Send a DISPATCH to the session serving it (kept for replay if the client is away)."""
        session = session or self.session_for(data)
        if session is None or not self._bot_sees(event, data):
            return False
        session.seq += 1
        frame = json.dumps({"op": DISPATCH, "t": event, "s": session.seq, "d": data})
        session.log.append((session.seq, frame))
        if session.conn is not None:
            session.conn.send(frame)
        return True

    def _bot_sees(self, event: str, data: Any) -> bool:
        """Events of a guild the bot is not a member of never reach it, as on Discord, except
        the interactions people start there through their own install of the app."""
        if event == "INTERACTION_CREATE":
            return True
        if not isinstance(data, dict) or data.get("guild_id") is None:
            return True
        guild = self.double.state.guilds.get(int(data["guild_id"]))
        return guild is None or guild.bot_member

    def send_op(self, op: int, data: Any = None) -> bool:
        session = self.active_session
        if session is None or session.conn is None:
            return False
        session.conn.send(json.dumps({"op": op, "d": data}))
        return True

    def request_reconnect(self) -> bool:
        """Send op 7 RECONNECT: discord.py closes and RESUMEs at resume_gateway_url."""
        return self.send_op(RECONNECT)

    def drop_connection(self, code: int = 4000) -> bool:
        """Close the socket from the server side (a resumable close code by default)."""
        session = self.active_session
        if session is None or session.conn is None:
            return False
        session.conn.send(_Close(code))
        return True

    def invalidate_session(self, resumable: bool = False) -> bool:
        """Send op 9. Non-resumable makes discord.py re-IDENTIFY (it waits 5 s first)."""
        session = self.active_session
        if session is None or session.conn is None:
            return False
        if not resumable:
            session.invalidated = True
        session.conn.send(json.dumps({"op": INVALID_SESSION, "d": resumable}))
        return True

    async def close_all(self, code: int = 1000) -> None:
        for conn in list(self.connections):
            conn.send(_Close(code))
        for conn in list(self.connections):
            if conn.writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(conn.writer), 2.0)
                if not conn.writer.done():
                    conn.writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await conn.writer

    # -- websocket handler --------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoclose=True, autoping=True)
        await ws.prepare(request)
        conn = Connection(ws=ws, query=dict(request.query))
        conn.writer = asyncio.create_task(self._writer(conn), name="discord-double-gateway-writer")
        self.connections.append(conn)
        conn.send(
            json.dumps(
                {
                    "op": HELLO,
                    "d": {
                        "heartbeat_interval": self.heartbeat_interval_ms,
                        "_trace": ['["discord-double",{"micros":0}]'],
                    },
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        conn.send(_Close(4002, b"Error while decoding payload."))
                        continue
                    await self._on_frame(conn, frame)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            conn.closed = True
            if conn.session is not None and conn.session.conn is conn:
                conn.session.conn = None
                if ws.close_code in (1000, 1001):
                    conn.session.ended = True
            conn.queue.put_nowait(None)
            if conn.writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.writer
            if conn in self.connections:
                self.connections.remove(conn)
            self.double._notify()
        return ws

    async def _writer(self, conn: Connection) -> None:
        while True:
            item = await conn.queue.get()
            if item is None:
                return
            try:
                if isinstance(item, _Close):
                    conn.closed = True
                    await conn.ws.close(code=item.code, message=item.message)
                    return
                await conn.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                conn.closed = True
                return

    async def _on_frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        data = frame.get("d")
        logged = json.loads(json.dumps(frame))
        if isinstance(logged.get("d"), dict) and "token" in logged["d"]:
            logged["d"]["token"] = "<redacted>"
        self.received.append(logged)

        if op == HEARTBEAT:
            conn.heartbeats += 1
            conn.send(json.dumps({"op": HEARTBEAT_ACK, "d": None}))
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            self._resume(conn, data or {})
        elif op == REQUEST_GUILD_MEMBERS:
            self._request_members(conn, data or {})
        elif op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            pass
        else:
            conn.send(_Close(4001, b"Unknown opcode."))
        self.double._notify()

    async def _identify(self, conn: Connection, data: dict[str, Any]) -> None:
        double = self.double
        if data.get("token") != double.token:
            conn.send(_Close(4004, b"Authentication failed."))
            return
        session = GatewaySession(
            id=secrets.token_hex(16),
            intents=int(data.get("intents") or 0),
            shard=data.get("shard"),
        )
        self.sessions[session.id] = session
        session.conn = conn
        conn.session = session
        if session.shard_count > 1:
            # Another process's shard stays connected; only this shard's old session ends.
            previous = self._shards.get(session.shard_id)
            if previous is not None:
                previous.invalidated = True
            if self._active is not None and self._active.shard_count == 1:
                self._active.invalidated = True
            self._shards[session.shard_id] = session
        elif self._active is not None:
            self._active.invalidated = True
        self._active = session

        state = double.state
        bot = state.users[double.bot_user_id]
        ready: dict[str, Any] = {
            "v": 10,
            "user": payloads.self_user_payload(bot),
            "user_settings": {},
            "guilds": [
                {"id": str(g.id), "unavailable": True}
                for g in self._guilds_of(session)
            ],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": double.gateway_url,
            "application": {"id": str(double.application_id), "flags": double.application_flags},
            "auth": {},
            "_trace": ['["discord-double",{"micros":0}]'],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        self.dispatch("READY", ready, session=session)
        all_members = session.has(INTENT_GUILD_MEMBERS)
        for guild in self._guilds_of(session):
            self.dispatch(
                "GUILD_CREATE",
                payloads.guild_create_payload(
                    guild, state, bot_id=double.bot_user_id, all_members=all_members
                ),
                session=session,
            )

    def _guilds_of(self, session: GatewaySession) -> list[Any]:
        return [g for g in self.double.state.guilds.values()
                if g.bot_member and (session.shard_count == 1 or session.serves(g.id))]

    def _resume(self, conn: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or session.invalidated or data.get("token") != self.double.token:
            conn.send(json.dumps({"op": INVALID_SESSION, "d": False}))
            return
        session.conn = conn
        conn.session = session
        session.resumes += 1
        last = int(data.get("seq") or 0)
        for seq, frame in session.log:
            if seq > last:
                conn.send(frame)
        self.dispatch("RESUMED", {"_trace": ['["discord-double",{"micros":0}]']}, session=session)

    def _request_members(self, conn: Connection, data: dict[str, Any]) -> None:
        session = conn.session
        if session is None:
            return
        state = self.double.state
        guild = state.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        query = data.get("query")
        user_ids = data.get("user_ids")
        limit = int(data.get("limit") or 0)
        found = []
        not_found: list[str] = []
        if user_ids is not None:
            wanted = user_ids if isinstance(user_ids, list) else [user_ids]
            for uid in wanted:
                member = guild.members.get(int(uid))
                if member is None:
                    not_found.append(str(uid))
                else:
                    found.append(member)
        else:
            for member in guild.members.values():
                name = state.users[member.user_id].username
                if query and not name.lower().startswith(str(query).lower()):
                    continue
                found.append(member)
        if limit:
            found = found[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [payloads.member_payload(m, state) for m in found],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        self.dispatch("GUILD_MEMBERS_CHUNK", chunk, session=session)
