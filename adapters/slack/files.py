"""Files both ways: downloading what users share (``url_private`` needs the bot token) and
uploading our images with Slack's external upload flow (files.upload was retired 2025-11-12)."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.pacer import SlackPacer

SLACK_FILE_HOSTS = ("slack.com", "slack-edge.com", "slack-files.com")
"""Hosts (and their subdomains) that serve ``url_private`` (files.slack.com today)."""


class FileDownloadError(Exception):
    """Slack did not hand over the file (no access, gone, or a login page instead of bytes)."""


def is_slack_file_url(url: str, api_url: str) -> bool:
    """Whether the bot token may be sent to ``url``: Slack's file hosts, or the host of the
    configured Web API (a local Slack in tests). Never to any other host."""
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return False
    if any(host == h or host.endswith("." + h) for h in SLACK_FILE_HOSTS):
        return urlsplit(url).scheme == "https"
    api = urlsplit(api_url)
    return host == (api.hostname or "").lower() and urlsplit(url).port == api.port


async def download_private(url: str, token: str, *, max_bytes: int) -> bytes:
    """GET a ``url_private`` with the bot token. Slack answers an unauthorised request with a
    redirect to its login page (HTML), so an HTML answer is an error, not the file."""
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url, headers=headers, allow_redirects=False) as response,
    ):
        if response.status != 200:
            raise FileDownloadError(f"Slack answered {response.status} for a shared file")
        if response.content_type == "text/html" and not url.endswith((".html", ".htm")):
            raise FileDownloadError("Slack answered with a page instead of the file")
        if response.content_length is not None and response.content_length > max_bytes:
            raise FileDownloadError(f"the file is larger than {max_bytes} bytes")
        data = await response.content.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise FileDownloadError(f"the file is larger than {max_bytes} bytes")
        return data


async def upload_file(
    client: AsyncWebClient,
    pacer: SlackPacer,
    team: str,
    data: bytes,
    *,
    name: str,
    alt_text: str = "",
) -> str:
    """Upload ``data`` privately (no channel) and return its Slack file id, for an image block's
    ``slack_file``. Steps: files.getUploadURLExternal, POST the bytes, completeUploadExternal."""
    ticket = await pacer.call(
        "files.getUploadURLExternal",
        team,
        None,
        lambda: client.files_getUploadURLExternal(filename=name, length=len(data), alt_txt=alt_text or None),
    )
    assert ticket is not None  # urgent calls never skip
    upload_url, file_id = ticket["upload_url"], ticket["file_id"]
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        http.post(upload_url, data=data, headers={"Content-Type": "application/octet-stream"}) as response,
    ):
        if response.status != 200:
            raise FileDownloadError(f"Slack refused the upload ({response.status})")
    await pacer.call(
        "files.completeUploadExternal",
        team,
        None,
        lambda: client.files_completeUploadExternal(files=[{"id": file_id, "title": alt_text or name}]),
    )
    return str(file_id)
