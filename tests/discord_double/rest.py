"""The REST API under ``/api/v10``: one catch-all handler, a route table, Discord-style errors.

Every request is recorded as a :class:`~tests.discord_double.state.Call` before it is answered;
requests no route matches answer 404 ``{"message": "404: Not Found", "code": 0}`` and stay in
``double.unhandled``. Failure rules (``double.fail_next``) are applied before routing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from . import payloads
from .interactions import (
    APPLICATION_COMMAND,
    APPLICATION_COMMAND_AUTOCOMPLETE,
    APPLICATION_COMMAND_AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE_WITH_SOURCE,
    DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
    DEFERRED_UPDATE_MESSAGE,
    MESSAGE_COMPONENT,
    MODAL,
    MODAL_SUBMIT,
    UPDATE_MESSAGE,
    InteractionHandle,
    RegisteredCommand,
)
from .state import (
    ATTACH_FILES,
    FLAG_EPHEMERAL,
    FLAG_IS_COMPONENTS_V2,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    TEXT_LIKE_CHANNEL_TYPES,
    VIEW_CHANNEL,
    Call,
    Channel,
    StoredAttachment,
    StoredMessage,
    UploadedFile,
)

if TYPE_CHECKING:
    from .server import DiscordDouble

CHANNEL_FLAGS_ALLOWED = FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2
INTERACTION_FLAGS_ALLOWED = CHANNEL_FLAGS_ALLOWED | FLAG_EPHEMERAL
COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


class ApiError(Exception):
    """Answer with a Discord JSON error."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def form_error(field: str, code: str, message: str) -> ApiError:
    errors: dict[str, Any] = {}
    node = errors
    parts = field.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {"_errors": [{"code": code, "message": message}]}
    return ApiError(400, 50035, "Invalid Form Body", errors=errors)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py compares the header with ==, so no charset.
    all_headers = {hdrs.CONTENT_TYPE: "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(data).encode(), headers=all_headers)


@dataclass
class Reply:
    status: int
    data: Any = None


@dataclass
class RestRequest:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    call: Call

    def int_param(self, name: str) -> int:
        return int(self.params[name])

    @property
    def body(self) -> dict[str, Any]:
        return self.json if isinstance(self.json, dict) else {}


Handler = Callable[[RestRequest], Awaitable[Any]]

_ID = r"(?P<{}>\d+)"
_TOKEN = r"(?P<token>[^/]+)"


def _p(pattern: str) -> re.Pattern[str]:
    for name in ("user_id", "guild_id", "channel_id", "message_id", "app_id", "command_id", "iid"):
        pattern = pattern.replace("{" + name + "}", _ID.format(name))
    pattern = pattern.replace("{token}", _TOKEN)
    return re.compile("^" + pattern + "$")


class RestApi:
    def __init__(self, double: DiscordDouble) -> None:
        self.double = double
        d = self
        # (method, pattern, handler, needs bot authorization)
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            ("GET", _p("/users/@me"), d.get_me, True),
            ("POST", _p("/users/@me/channels"), d.open_dm, True),
            ("GET", _p("/users/{user_id}"), d.get_user, True),
            ("GET", _p("/gateway"), d.get_gateway, False),
            ("GET", _p("/gateway/bot"), d.get_gateway_bot, True),
            ("GET", _p("/applications/@me"), d.get_application, True),
            ("GET", _p("/oauth2/applications/@me"), d.get_application, True),
            ("GET", _p("/applications/{app_id}/commands"), d.list_commands, True),
            ("PUT", _p("/applications/{app_id}/commands"), d.put_commands, True),
            ("POST", _p("/applications/{app_id}/commands"), d.post_command, True),
            ("GET", _p("/applications/{app_id}/commands/{command_id}"), d.get_command, True),
            ("PATCH", _p("/applications/{app_id}/commands/{command_id}"), d.patch_command, True),
            ("DELETE", _p("/applications/{app_id}/commands/{command_id}"), d.delete_command, True),
            ("GET", _p("/applications/{app_id}/guilds/{guild_id}/commands"), d.list_commands, True),
            ("PUT", _p("/applications/{app_id}/guilds/{guild_id}/commands"), d.put_commands, True),
            ("POST", _p("/applications/{app_id}/guilds/{guild_id}/commands"), d.post_command, True),
            (
                "GET",
                _p("/applications/{app_id}/guilds/{guild_id}/commands/{command_id}"),
                d.get_command,
                True,
            ),
            (
                "PATCH",
                _p("/applications/{app_id}/guilds/{guild_id}/commands/{command_id}"),
                d.patch_command,
                True,
            ),
            (
                "DELETE",
                _p("/applications/{app_id}/guilds/{guild_id}/commands/{command_id}"),
                d.delete_command,
                True,
            ),
            ("GET", _p("/guilds/{guild_id}"), d.get_guild, True),
            ("GET", _p("/guilds/{guild_id}/channels"), d.get_guild_channels, True),
            ("GET", _p("/guilds/{guild_id}/roles"), d.get_guild_roles, True),
            ("GET", _p("/guilds/{guild_id}/members/{user_id}"), d.get_member, True),
            ("GET", _p("/channels/{channel_id}"), d.get_channel, True),
            ("GET", _p("/channels/{channel_id}/messages"), d.get_messages, True),
            ("POST", _p("/channels/{channel_id}/messages"), d.create_message, True),
            ("POST", _p("/channels/{channel_id}/messages/bulk-delete"), d.bulk_delete, True),
            ("GET", _p("/channels/{channel_id}/messages/{message_id}"), d.get_message, True),
            ("PATCH", _p("/channels/{channel_id}/messages/{message_id}"), d.edit_message, True),
            ("DELETE", _p("/channels/{channel_id}/messages/{message_id}"), d.delete_message, True),
            ("POST", _p("/channels/{channel_id}/typing"), d.typing, True),
            ("POST", _p("/interactions/{iid}/{token}/callback"), d.interaction_callback, False),
            ("POST", _p("/webhooks/{app_id}/{token}"), d.create_followup, False),
            (
                "GET",
                re.compile(
                    r"^/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)$"
                ),
                d.get_webhook_message,
                False,
            ),
            (
                "PATCH",
                re.compile(
                    r"^/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)$"
                ),
                d.edit_webhook_message,
                False,
            ),
            (
                "DELETE",
                re.compile(
                    r"^/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)$"
                ),
                d.delete_webhook_message,
                False,
            ),
        ]

    # -- plumbing -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        double = self.double
        double._in_flight += 1
        try:
            return await self._handle(request)
        finally:
            double._in_flight -= 1
            double._last_activity = time.monotonic()
            double._notify()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        double = self.double
        method = request.method.upper()
        path = "/" + request.match_info.get("tail", "")
        body, files = await self._read_body(request)
        auth = request.headers.get(hdrs.AUTHORIZATION)
        call = Call(
            method=method,
            path=path,
            query=dict(request.query),
            json=body,
            files=files,
            time=time.monotonic(),
            authorized=auth == f"Bot {double.token}",
        )
        double.calls.append(call)

        rule = double._match_failure(method, path)
        if rule is not None:
            call.injected = True
            rule.times -= 1
            rule.hits += 1
            headers: dict[str, str] = {}
            data = payloads.error_payload(rule.code, rule.message)
            if rule.status == 429:
                data = {
                    "message": rule.message,
                    "retry_after": rule.retry_after,
                    "global": rule.is_global,
                }
                if rule.code:
                    data["code"] = rule.code
                headers = {
                    "Retry-After": str(max(1, int(rule.retry_after + 0.999))),
                    "Via": "1.1 google",
                    "X-RateLimit-Scope": "global" if rule.is_global else "user",
                }
                if rule.is_global:
                    headers["X-RateLimit-Global"] = "true"
            call.status, call.response = rule.status, data
            return json_response(data, rule.status, headers)

        matched = self._match(method, path)
        if matched is None:
            allowed = [m for m, pattern, _, _ in self.routes if pattern.match(path)]
            status, msg = (405, "405: Method Not Allowed") if allowed else (404, "404: Not Found")
            data = payloads.error_payload(0, msg)
            call.status, call.response = status, data
            return json_response(data, status)

        handler, params, needs_auth = matched
        call.route = handler.__name__
        try:
            if needs_auth and not call.authorized:
                raise ApiError(401, 0, "401: Unauthorized")
            req = RestRequest(method, path, params, call.query, body, files, call)
            result = await handler(req)
        except ApiError as exc:
            data = payloads.error_payload(exc.code, exc.message, exc.errors)
            call.status, call.response = exc.status, data
            return json_response(data, exc.status, exc.headers)
        if isinstance(result, Reply):
            status, result = result.status, result.data
        else:
            status = 200 if result is not None else 204
        call.status, call.response = status, result
        if status == 204:
            return web.Response(status=204)
        return json_response(result, status)

    def _match(self, method: str, path: str) -> tuple[Handler, dict[str, str], bool] | None:
        for m, pattern, handler, needs_auth in self.routes:
            if m != method:
                continue
            found = pattern.match(path)
            if found:
                return handler, found.groupdict(), needs_auth
        return None

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        if not request.can_read_body:
            return None, []
        ctype = request.content_type
        files: list[UploadedFile] = []
        if ctype.startswith("multipart/"):
            body: Any = None
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not hasattr(part, "read"):
                    continue
                raw = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                if part.name == "payload_json":
                    body = json.loads(raw.decode("utf-8"))
                else:
                    files.append(
                        UploadedFile(
                            field_name=part.name or "",
                            filename=part.filename,
                            content_type=part.headers.get(hdrs.CONTENT_TYPE),
                            data=raw,
                        )
                    )
            return body, files
        raw = await request.read()
        if not raw:
            return None, []
        if ctype == "application/json":
            try:
                return json.loads(raw), []
            except ValueError:
                return {"_invalid_json": raw.decode("utf-8", "replace")}, []
        return raw.decode("utf-8", "replace"), []

    # -- shared checks ------------------------------------------------------------------------

    def _channel(self, r: RestRequest) -> Channel:
        ch = self.double.state.channels.get(r.int_param("channel_id"))
        if ch is None or ch.deleted:
            raise ApiError(404, 10003, "Unknown Channel")
        if ch.is_dm and ch.recipient_id is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return ch

    def _bot_perms(self, ch: Channel) -> int:
        return self.double.state.channel_permissions(ch, self.double.bot_user_id)

    def _require_view(self, ch: Channel) -> int:
        if ch.is_group_dm and self.double.bot_user_id not in ch.recipient_ids:
            raise ApiError(403, 50001, "Missing Access")
        perms = self._bot_perms(ch)
        if not ch.is_dm and not perms & VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        return perms

    def _message_in(self, ch: Channel, r: RestRequest) -> StoredMessage:
        msg = self.double.state.messages.get(r.int_param("message_id"))
        if msg is None or msg.channel_id != ch.id or msg.deleted or msg.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _app(self, r: RestRequest) -> None:
        if r.int_param("app_id") != self.double.application_id:
            raise ApiError(403, 50001, "Missing Access")

    # -- message bodies -----------------------------------------------------------------------

    def _message_fields(
        self, body: dict[str, Any], *, allowed_flags: int, partial: bool
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if "content" in body or not partial:
            content = body.get("content")
            content = "" if content is None else str(content)
            if len(content) > 2000:
                raise form_error(
                    "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
                )
            fields["content"] = content
        if "embeds" in body or not partial:
            embeds = body.get("embeds") or []
            if len(embeds) > 10:
                raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
            self._check_embeds(embeds)
            fields["embeds"] = [json.loads(json.dumps(e)) for e in embeds]
        if "components" in body or not partial:
            fields["components"] = json.loads(json.dumps(body.get("components") or []))
        if "flags" in body or not partial:
            fields["flags"] = int(body.get("flags") or 0) & allowed_flags
        if "tts" in body and not partial:
            fields["tts"] = bool(body.get("tts"))
        if body.get("message_reference") and not partial:
            fields["message_reference"] = body["message_reference"]
        return fields

    @staticmethod
    def _check_embeds(embeds: list[dict[str, Any]]) -> None:
        total = 0
        limits = {"title": 256, "description": 4096}
        for i, embed in enumerate(embeds):
            for key, limit in limits.items():
                value = embed.get(key) or ""
                total += len(value)
                if len(value) > limit:
                    raise form_error(
                        f"embeds.{i}.{key}",
                        "BASE_TYPE_MAX_LENGTH",
                        f"Must be {limit} or fewer in length.",
                    )
            fields = embed.get("fields") or []
            if len(fields) > 25:
                raise form_error(
                    f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for field in fields:
                total += len(field.get("name") or "") + len(field.get("value") or "")
                if len(field.get("name") or "") > 256 or len(field.get("value") or "") > 1024:
                    raise form_error(
                        f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", "Field too long."
                    )
            total += len((embed.get("footer") or {}).get("text") or "")
            total += len((embed.get("author") or {}).get("name") or "")
        if total > 6000:
            raise form_error(
                "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
            )

    def _attachments(
        self,
        body: dict[str, Any],
        files: list[UploadedFile],
        channel: Channel,
        *,
        ephemeral: bool,
        keep: list[StoredAttachment],
        editing: bool,
    ) -> list[StoredAttachment] | None:
        """Resolve the final attachment list; None means "unchanged" (edit without attachments)."""
        double = self.double
        by_index: dict[int, UploadedFile] = {}
        order: list[int] = []
        for pos, f in enumerate(files):
            m = re.fullmatch(r"files\[(\d+)\]", f.field_name) or re.fullmatch(
                r"file(\d*)", f.field_name
            )
            index = int(m.group(1)) if m and m.group(1) else pos
            by_index[index] = f
            order.append(index)
        for f in files:
            if len(f.data) > double.attachment_size_limit:
                raise ApiError(413, 40005, "Request entity too large")

        def store(f: UploadedFile, entry: dict[str, Any] | None) -> StoredAttachment:
            filename = (entry or {}).get("filename") or f.filename or "unknown"
            return double._store_attachment(
                f.data,
                filename,
                channel_id=channel.id,
                ephemeral=ephemeral,
                uploader_id=double.bot_user_id,
                description=(entry or {}).get("description"),
                title=(entry or {}).get("title"),
            )

        entries = body.get("attachments")
        if entries is None:
            if editing and not files:
                return None
            result = list(keep) + [store(by_index[i], None) for i in order]
        else:
            result = []
            kept = {a.id: a for a in keep}
            for i, entry in enumerate(entries):
                eid = int(entry.get("id"))
                if eid in kept:
                    result.append(kept[eid])
                elif eid in by_index:
                    result.append(store(by_index.pop(eid), entry))
                else:
                    raise form_error(
                        f"attachments.{i}",
                        "ATTACHMENT_NOT_FOUND",
                        f"Attachment {eid} was not found",
                    )
            # Files sent without an entry are still attached (never silently dropped).
            result += [store(f, None) for i, f in sorted(by_index.items())]
        if len(result) > 10:
            raise form_error(
                "attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
            )
        return result

    @staticmethod
    def _require_not_empty(
        fields: dict[str, Any], attachments: list[StoredAttachment] | None, body: dict[str, Any]
    ) -> None:
        if (
            not fields.get("content")
            and not fields.get("embeds")
            and not fields.get("components")
            and not attachments
            and not body.get("sticker_ids")
            and not body.get("poll")
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")

    # -- users, gateway, application ----------------------------------------------------------

    async def get_me(self, r: RestRequest) -> Any:
        return payloads.self_user_payload(self.double.state.users[self.double.bot_user_id])

    async def get_user(self, r: RestRequest) -> Any:
        user = self.double.state.users.get(r.int_param("user_id"))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return payloads.user_payload(user)

    async def open_dm(self, r: RestRequest) -> Any:
        raw = r.body.get("recipient_id")
        try:
            uid = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise form_error(
                "recipient_id", "NUMBER_TYPE_COERCE", "Value is not snowflake."
            ) from None
        if uid not in self.double.state.users or uid == self.double.bot_user_id:
            raise ApiError(400, 50033, "Invalid Recipient(s)")
        ch = self.double._open_dm(uid)
        return payloads.channel_payload(ch, self.double.state)

    async def get_gateway(self, r: RestRequest) -> Any:
        return {"url": self.double.gateway_url}

    async def get_gateway_bot(self, r: RestRequest) -> Any:
        return {
            "url": self.double.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": 1,
            },
        }

    async def get_application(self, r: RestRequest) -> Any:
        return self.double._application_payload()

    # -- application commands -----------------------------------------------------------------

    def _command_scope(self, r: RestRequest) -> int | None:
        self._app(r)
        gid = r.params.get("guild_id")
        if gid is None:
            return None
        if int(gid) not in self.double.state.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return int(gid)

    def _validate_command(self, cmd: dict[str, Any], prefix: str) -> None:
        name = cmd.get("name")
        ctype = int(cmd.get("type") or 1)
        if ctype == 1:
            bad = not isinstance(name, str) or not COMMAND_NAME.match(name) or name != name.lower()
        else:  # user/message context menus: 1-32 characters, spaces and capitals allowed
            bad = not isinstance(name, str) or not 1 <= len(name.strip()) <= 32
        if bad:
            raise form_error(
                f"{prefix}name",
                "APPLICATION_COMMAND_INVALID_NAME",
                f"Command name is invalid: {name!r}",
            )
        if ctype == 1:
            desc = cmd.get("description")
            if not isinstance(desc, str) or not 1 <= len(desc) <= 100:
                raise form_error(
                    f"{prefix}description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            self._validate_options(cmd.get("options") or [], f"{prefix}options.", depth=0)
        elif cmd.get("description"):
            raise form_error(
                f"{prefix}description",
                "BASE_TYPE_BAD_LENGTH",
                "Context menu commands have no description.",
            )

    def _validate_options(self, options: list[dict[str, Any]], prefix: str, depth: int) -> None:
        if len(options) > 25:
            raise form_error(
                prefix.rstrip("."), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        seen: set[str] = set()
        optional_seen = False
        for i, opt in enumerate(options):
            p = f"{prefix}{i}."
            name = opt.get("name")
            if not isinstance(name, str) or not COMMAND_NAME.match(name) or name != name.lower():
                raise form_error(
                    f"{p}name",
                    "APPLICATION_COMMAND_INVALID_NAME",
                    f"Option name is invalid: {name!r}",
                )
            if name in seen:
                raise form_error(
                    f"{p}name",
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Duplicate option name",
                )
            seen.add(name)
            desc = opt.get("description")
            if not isinstance(desc, str) or not 1 <= len(desc) <= 100:
                raise form_error(
                    f"{p}description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            otype = int(opt.get("type") or 0)
            if otype in (1, 2):
                if otype == 2 and depth > 0 or otype == 1 and depth > 1:
                    raise form_error(
                        f"{p}type", "APPLICATION_COMMAND_OPTION_TYPE_INVALID", "Nesting too deep"
                    )
                self._validate_options(opt.get("options") or [], f"{p}options.", depth + 1)
                continue
            if opt.get("required"):
                if optional_seen:
                    raise form_error(
                        f"{p}required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                optional_seen = True
            if len(opt.get("choices") or []) > 25:
                raise form_error(
                    f"{p}choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            if opt.get("choices") and opt.get("autocomplete"):
                raise form_error(
                    f"{p}autocomplete",
                    "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID",
                    "Choices and autocomplete are exclusive",
                )

    def _stored_command(
        self, cmd: dict[str, Any], scope: int | None, existing: RegisteredCommand | None
    ) -> RegisteredCommand:
        double = self.double
        cid = existing.id if existing is not None else double.state.next_id()
        payload = {
            "id": str(cid),
            "application_id": str(double.application_id),
            "version": str(double.state.next_id()),
            "type": int(cmd.get("type") or 1),
            "name": cmd["name"],
            "name_localizations": cmd.get("name_localizations"),
            "description": cmd.get("description") or "",
            "description_localizations": cmd.get("description_localizations"),
            "default_member_permissions": cmd.get("default_member_permissions"),
            "contexts": cmd.get("contexts"),
            "integration_types": cmd.get("integration_types")
            if cmd.get("integration_types") is not None
            else [0],
            "nsfw": bool(cmd.get("nsfw", False)),
            "options": json.loads(json.dumps(cmd.get("options") or [])),
        }
        if "dm_permission" in cmd:
            payload["dm_permission"] = cmd["dm_permission"]
        if scope is not None:
            payload["guild_id"] = str(scope)
        return RegisteredCommand(payload)

    async def list_commands(self, r: RestRequest) -> Any:
        scope = self._command_scope(r)
        return [c.payload for c in self.double._command_store.get(scope, [])]

    async def put_commands(self, r: RestRequest) -> Any:
        scope = self._command_scope(r)
        body = r.json if isinstance(r.json, list) else None
        if body is None:
            raise form_error("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        chat = sum(1 for c in body if int(c.get("type") or 1) == 1)
        if chat > 100:
            raise form_error("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        seen: set[tuple[str, int]] = set()
        for i, cmd in enumerate(body):
            self._validate_command(cmd, f"{i}.")
            key = (cmd["name"], int(cmd.get("type") or 1))
            if key in seen:
                raise form_error(
                    f"{i}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {key[0]}",
                )
            seen.add(key)
        old = {(c.name, c.type): c for c in self.double._command_store.get(scope, [])}
        stored = [
            self._stored_command(cmd, scope, old.get((cmd["name"], int(cmd.get("type") or 1))))
            for cmd in body
        ]
        self.double._command_store[scope] = stored
        self.double.command_syncs.append((scope, [c.name for c in stored]))
        return [c.payload for c in stored]

    async def post_command(self, r: RestRequest) -> Any:
        scope = self._command_scope(r)
        cmd = r.body
        self._validate_command(cmd, "")
        current = self.double._command_store.setdefault(scope, [])
        key = (cmd["name"], int(cmd.get("type") or 1))
        existing = next((c for c in current if (c.name, c.type) == key), None)
        stored = self._stored_command(cmd, scope, existing)
        if existing is not None:
            current[current.index(existing)] = stored
            return stored.payload
        current.append(stored)
        return Reply(201, stored.payload)

    def _find_command(self, r: RestRequest) -> tuple[int | None, RegisteredCommand]:
        scope = self._command_scope(r)
        cid = r.int_param("command_id")
        for cmd in self.double._command_store.get(scope, []):
            if cmd.id == cid:
                return scope, cmd
        raise ApiError(404, 10063, "Unknown application command")

    async def get_command(self, r: RestRequest) -> Any:
        return self._find_command(r)[1].payload

    async def patch_command(self, r: RestRequest) -> Any:
        scope, cmd = self._find_command(r)
        merged = {**cmd.payload, **r.body}
        self._validate_command(merged, "")
        stored = self._stored_command(merged, scope, cmd)
        current = self.double._command_store[scope]
        current[current.index(cmd)] = stored
        return stored.payload

    async def delete_command(self, r: RestRequest) -> Any:
        scope, cmd = self._find_command(r)
        self.double._command_store[scope].remove(cmd)
        return None

    # -- guilds -------------------------------------------------------------------------------

    def _guild(self, r: RestRequest) -> Any:
        guild = self.double.state.guilds.get(r.int_param("guild_id"))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, r: RestRequest) -> Any:
        return payloads.guild_rest_payload(self._guild(r), self.double.state)

    async def get_guild_channels(self, r: RestRequest) -> Any:
        guild = self._guild(r)
        state = self.double.state
        return [
            payloads.channel_payload(state.channels[cid], state)
            for cid in guild.channel_ids
            if not state.channels[cid].deleted
        ]

    async def get_guild_roles(self, r: RestRequest) -> Any:
        return [payloads.role_payload(role) for role in self._guild(r).roles.values()]

    async def get_member(self, r: RestRequest) -> Any:
        guild = self._guild(r)
        member = guild.members.get(r.int_param("user_id"))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return payloads.member_payload(member, self.double.state)

    # -- channels and messages ----------------------------------------------------------------

    async def get_channel(self, r: RestRequest) -> Any:
        ch = self._channel(r)
        self._require_view(ch)
        return payloads.channel_payload(ch, self.double.state)

    async def typing(self, r: RestRequest) -> Any:
        self._require_view(self._channel(r))
        return None

    async def get_messages(self, r: RestRequest) -> Any:
        ch = self._channel(r)
        perms = self._require_view(ch)
        if not ch.is_dm and not perms & READ_MESSAGE_HISTORY:
            return []
        state = self.double.state
        visible = [
            state.messages[mid]
            for mid in ch.message_ids
            if not state.messages[mid].deleted and not state.messages[mid].ephemeral
        ]
        limit = max(1, min(100, int(r.query.get("limit", 50))))
        if "before" in r.query:
            before = int(r.query["before"])
            picked = [m for m in visible if m.id < before][-limit:]
        elif "after" in r.query:
            after = int(r.query["after"])
            picked = [m for m in visible if m.id > after][:limit]
        elif "around" in r.query:
            around = int(r.query["around"])
            older = [m for m in visible if m.id < around][-(limit // 2) :] if limit > 1 else []
            newer = [m for m in visible if m.id >= around][: limit - len(older)]
            picked = older + newer
        else:
            picked = visible[-limit:]
        return [payloads.message_payload(m, state) for m in reversed(picked)]

    async def get_message(self, r: RestRequest) -> Any:
        ch = self._channel(r)
        perms = self._require_view(ch)
        if not ch.is_dm and not perms & READ_MESSAGE_HISTORY:
            raise ApiError(403, 50001, "Missing Access")
        return payloads.message_payload(self._message_in(ch, r), self.double.state)

    async def create_message(self, r: RestRequest) -> Any:
        double = self.double
        ch = self._channel(r)
        if ch.type not in TEXT_LIKE_CHANNEL_TYPES:
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        if ch.is_dm:
            recipient = double.state.users.get(ch.recipient_id or 0)
            if ch.recipient_id in double.state.closed_dms or recipient is None or recipient.bot:
                raise ApiError(403, 50007, "Cannot send messages to this user")
            if double.dms_need_mutual_guild and not double.state.shares_guild(
                double.bot_user_id, recipient.id
            ):
                raise ApiError(
                    403, 50278, "Cannot send messages to this user due to having no mutual guilds"
                )
        else:
            perms = self._require_view(ch)
            if not ch.bot_can_send or not perms & SEND_MESSAGES:
                raise ApiError(403, 50013, "Missing Permissions")
            if r.files and not perms & ATTACH_FILES:
                raise ApiError(403, 50013, "Missing Permissions")
        body = r.body
        fields = self._message_fields(body, allowed_flags=CHANNEL_FLAGS_ALLOWED, partial=False)
        atts = self._attachments(body, r.files, ch, ephemeral=False, keep=[], editing=False)
        self._require_not_empty(fields, atts, body)
        msg = double._create_message(
            ch,
            author_id=double.bot_user_id,
            attachments=atts or [],
            created_via="channel",
            **fields,
        )
        return payloads.message_payload(msg, double.state)

    async def edit_message(self, r: RestRequest) -> Any:
        double = self.double
        ch = self._channel(r)
        self._require_view(ch)
        msg = self._message_in(ch, r)
        if msg.author_id != double.bot_user_id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return self._apply_edit(msg, r, ch, allowed_flags=FLAG_SUPPRESS_EMBEDS)

    def _apply_edit(
        self, msg: StoredMessage, r: RestRequest, ch: Channel, *, allowed_flags: int
    ) -> Any:
        body = r.body
        fields = self._message_fields(body, allowed_flags=allowed_flags, partial=True)
        if "flags" in fields:
            fields["flags"] = (msg.flags & ~allowed_flags) | fields["flags"]
        atts = self._attachments(
            body, r.files, ch, ephemeral=msg.ephemeral, keep=msg.attachments, editing=True
        )
        if atts is not None:
            fields["attachments"] = atts
        self.double._edit_message(msg, **fields)
        return payloads.message_payload(msg, self.double.state)

    async def delete_message(self, r: RestRequest) -> Any:
        double = self.double
        ch = self._channel(r)
        perms = self._require_view(ch)
        msg = self._message_in(ch, r)
        if msg.author_id != double.bot_user_id:
            if ch.is_dm:
                raise ApiError(403, 50003, "Cannot execute action on a DM channel")
            if not perms & MANAGE_MESSAGES:
                raise ApiError(403, 50013, "Missing Permissions")
        double._delete_message(msg, via="channel")
        return None

    async def bulk_delete(self, r: RestRequest) -> Any:
        double = self.double
        ch = self._channel(r)
        if ch.is_dm:
            raise ApiError(403, 50003, "Cannot execute action on a DM channel")
        perms = self._require_view(ch)
        if not perms & MANAGE_MESSAGES:
            raise ApiError(403, 50013, "Missing Permissions")
        ids = r.body.get("messages") or []
        if not 2 <= len(ids) <= 100:
            raise form_error(
                "messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length."
            )
        doomed = []
        for raw in ids:
            msg = double.state.messages.get(int(raw))
            if (
                msg is not None
                and msg.channel_id == ch.id
                and not msg.deleted
                and not msg.ephemeral
            ):
                doomed.append(msg)
        double._bulk_delete(ch, doomed)
        return None

    # -- interactions -------------------------------------------------------------------------

    def _interaction_for_callback(self, r: RestRequest) -> InteractionHandle:
        double = self.double
        handle = double._interactions_by_id.get(r.int_param("iid"))
        if handle is None or handle.token != r.params["token"] or handle.expired:
            raise ApiError(404, 10062, "Unknown interaction")
        if handle.acknowledged:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if (
            double.ack_deadline is not None
            and time.monotonic() - handle.created > double.ack_deadline
        ):
            raise ApiError(404, 10062, "Unknown interaction")
        return handle

    async def interaction_callback(self, r: RestRequest) -> Any:
        double = self.double
        handle = self._interaction_for_callback(r)
        body = r.body
        try:
            cb = int(body["type"])
        except (KeyError, TypeError, ValueError):
            raise form_error("type", "BASE_TYPE_REQUIRED", "This field is required") from None
        data = body.get("data") or {}
        valid = {
            APPLICATION_COMMAND: {
                CHANNEL_MESSAGE_WITH_SOURCE,
                DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
                MODAL,
            },
            MESSAGE_COMPONENT: {
                CHANNEL_MESSAGE_WITH_SOURCE,
                DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
                DEFERRED_UPDATE_MESSAGE,
                UPDATE_MESSAGE,
                MODAL,
            },
            APPLICATION_COMMAND_AUTOCOMPLETE: {APPLICATION_COMMAND_AUTOCOMPLETE_RESULT},
            MODAL_SUBMIT: {CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}
            | (
                {DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE}
                if handle.target_message is not None
                else set()
            ),
        }[handle.type]
        if cb not in valid:
            raise form_error(
                "type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Callback type {cb} is invalid here"
            )
        ch = double.state.channels[handle.channel_id]
        msg: StoredMessage | None = None
        if cb == CHANNEL_MESSAGE_WITH_SOURCE:
            fields = self._message_fields(
                data, allowed_flags=INTERACTION_FLAGS_ALLOWED, partial=False
            )
            ephemeral = bool(fields["flags"] & FLAG_EPHEMERAL)
            atts = self._attachments(data, r.files, ch, ephemeral=ephemeral, keep=[], editing=False)
            self._require_not_empty(fields, atts, data)
            msg = double._create_message(
                ch,
                author_id=double.bot_user_id,
                attachments=atts or [],
                created_via="interaction",
                interaction=handle,
                **fields,
            )
            handle.original = msg
        elif cb == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            msg = double._create_message(
                ch,
                author_id=double.bot_user_id,
                attachments=[],
                created_via="interaction",
                interaction=handle,
                flags=flags,
            )
            handle.original = msg
            handle.deferred_pending = True
        elif cb == DEFERRED_UPDATE_MESSAGE:
            handle.original = handle.target_message
        elif cb == UPDATE_MESSAGE:
            target = handle.target_message
            assert target is not None
            if target.deleted:
                raise ApiError(404, 10008, "Unknown Message")
            fields = self._message_fields(data, allowed_flags=FLAG_SUPPRESS_EMBEDS, partial=True)
            if "flags" in fields:
                fields["flags"] = (target.flags & ~FLAG_SUPPRESS_EMBEDS) | fields["flags"]
            atts = self._attachments(
                data, r.files, ch, ephemeral=target.ephemeral, keep=target.attachments, editing=True
            )
            if atts is not None:
                fields["attachments"] = atts
            double._edit_message(target, **fields)
            handle.original = msg = target
        elif cb == APPLICATION_COMMAND_AUTOCOMPLETE_RESULT:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise form_error(
                    "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            handle.choices = choices
        elif cb == MODAL:
            for key in ("custom_id", "title", "components"):
                if not data.get(key):
                    raise form_error(f"data.{key}", "BASE_TYPE_REQUIRED", "This field is required")
            handle.modal = data
        handle.responses.append({"type": cb, "data": data, "files": r.files})

        if r.query.get("with_response") not in ("1", "true", "True"):
            return None
        interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        result: dict[str, Any] = {"interaction": interaction}
        if msg is not None:
            interaction["response_message_id"] = str(msg.id)
            interaction["response_message_loading"] = cb == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            interaction["response_message_ephemeral"] = msg.ephemeral
            if cb != DEFERRED_UPDATE_MESSAGE:
                result["resource"] = {
                    "type": cb,
                    "message": payloads.message_payload(msg, double.state),
                }
        return result

    def _handle_for_webhook(self, r: RestRequest) -> InteractionHandle:
        double = self.double
        handle = double._interactions_by_token.get(r.params["token"])
        if handle is None or r.int_param("app_id") != double.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if handle.expired:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not handle.acknowledged:
            raise ApiError(404, 10015, "Unknown Webhook")
        return handle

    async def create_followup(self, r: RestRequest) -> Any:
        double = self.double
        handle = self._handle_for_webhook(r)
        ch = double.state.channels[handle.channel_id]
        body = r.body
        fields = self._message_fields(body, allowed_flags=INTERACTION_FLAGS_ALLOWED, partial=False)
        original = handle.original
        if handle.deferred_pending and original is not None and not original.deleted:
            # The first followup after a type 5 defer replaces the "thinking" message and keeps
            # the defer's ephemeral flag, whatever flags the followup asked for.
            fields["flags"] = (original.flags & FLAG_EPHEMERAL) | (
                fields["flags"] & ~FLAG_EPHEMERAL
            )
            atts = self._attachments(
                body, r.files, ch, ephemeral=original.ephemeral, keep=[], editing=False
            )
            self._require_not_empty(fields, atts, body)
            fields.pop("tts", None)
            fields.pop("message_reference", None)
            double._edit_message(original, attachments=atts or [], mark_edited=False, **fields)
            handle.deferred_pending = False
            msg = original
        else:
            ephemeral = bool(fields["flags"] & FLAG_EPHEMERAL)
            atts = self._attachments(body, r.files, ch, ephemeral=ephemeral, keep=[], editing=False)
            self._require_not_empty(fields, atts, body)
            msg = double._create_message(
                ch,
                author_id=double.bot_user_id,
                attachments=atts or [],
                created_via="followup",
                interaction=handle,
                **fields,
            )
        handle.followups.append(msg)
        if r.query.get("wait") in ("0", "false", "False"):
            return None
        return payloads.message_payload(msg, double.state)

    def _webhook_message(self, handle: InteractionHandle, r: RestRequest) -> StoredMessage:
        mid = r.params["mid"]
        if mid == "@original":
            msg = handle.original
        else:
            msg = next((m for m in handle.messages if m.id == int(mid)), None)
        if msg is None or msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def get_webhook_message(self, r: RestRequest) -> Any:
        handle = self._handle_for_webhook(r)
        return payloads.message_payload(self._webhook_message(handle, r), self.double.state)

    async def edit_webhook_message(self, r: RestRequest) -> Any:
        double = self.double
        handle = self._handle_for_webhook(r)
        msg = self._webhook_message(handle, r)
        ch = double.state.channels[msg.channel_id]
        if ch.deleted:
            raise ApiError(404, 10003, "Unknown Channel")
        is_original = msg is handle.original
        result = self._apply_edit(msg, r, ch, allowed_flags=FLAG_SUPPRESS_EMBEDS)
        if is_original:
            if handle.deferred_pending:
                msg.flags &= ~FLAG_LOADING
                handle.deferred_pending = False
                result = payloads.message_payload(msg, double.state)
            handle.edits.append(r.body)
        return result

    async def delete_webhook_message(self, r: RestRequest) -> Any:
        handle = self._handle_for_webhook(r)
        msg = self._webhook_message(handle, r)
        if msg is handle.original:
            handle.original_deleted = True
            handle.deferred_pending = False
        self.double._delete_message(msg, via="webhook")
        return None

    # -- attachments (the double's "CDN") -----------------------------------------------------

    async def serve_attachment(self, request: web.Request) -> web.StreamResponse:
        double = self.double
        double.attachment_requests.append(request.path)
        try:
            att = double.state.attachments.get(int(request.match_info["att_id"]))
        except ValueError:
            att = None
        if att is None or att.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        if att.message_id is not None:
            msg = double.state.messages.get(att.message_id)
            if msg is not None and msg.deleted:
                return web.Response(status=404, text="Not Found")
        return web.Response(
            status=200,
            body=att.data,
            headers={hdrs.CONTENT_TYPE: att.content_type or "application/octet-stream"},
        )
