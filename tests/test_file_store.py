"""``FileStore`` on its own: real files under ``tmp_path``, a real Store (SQLite file, then
PostgreSQL) for the file records, and the signed URLs checked through ``verify`` as the
``/files/{id}`` route checks them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.files import FileRejected, FileStore
from gateway.testing import test_settings

SECRET = "test-secret-of-at-least-32-bytes!"  # chatgate refuses shorter secret keys
PUBLIC_URL = "https://chat.example.com/"
MIB = 1024 * 1024


@pytest.fixture
def make_files(store, tmp_path) -> Callable[..., FileStore]:
    """Builds FileStores on ``store`` (one place to follow a constructor change)."""

    def make(*, secret: str = SECRET, public_url: str = PUBLIC_URL, **files: Any) -> FileStore:
        config = test_settings(tmp_path, secret_key=secret, files={"dir": str(tmp_path / "files"), **files})
        return FileStore(config, store, public_url)

    return make


@pytest.fixture
def files(make_files) -> FileStore:
    return make_files()


def parts(url: str) -> tuple[str, str, str, str]:
    """``(file id, session id, expires, signature)`` as the file route reads them from a URL."""
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    return split.path.rsplit("/", 1)[1], query["s"], query["exp"], query["sig"]


# -- saving and reading ----------------------------------------------------------------------


async def test_save_then_read_returns_the_same_bytes_and_the_record(files, store):
    data = bytes(range(256)) * 1000
    record = await files.save(data, name="report.pdf", content_type="application/pdf", session_id="s1")
    assert (record.name, record.content_type, record.size, record.session_id) == (
        "report.pdf", "application/pdf", len(data), "s1")
    assert await files.read(record.id) == data
    assert await store.files.get(record.id) == record
    # Written atomically: the file under its id, no temporary left beside it.
    assert sorted(p.name for p in files.root.iterdir()) == [record.id]


TRAVERSAL_NAMES = ["../../etc/passwd", "..", "/abs/path.txt", "a/b\\c.txt", "C:\\Windows\\x.ini", ".hidden"]
UNICODE_NAMES = ["résumé.pdf", "e\u0301cole.txt", "写真.png", "📎 notes 🚀.md", "\u202egnp.exe", "ﬁle\u200b.txt",
                 "x" * 500]


async def test_odd_unicode_names_round_trip(files, store):
    for name in UNICODE_NAMES:
        record = await files.save(b"x", name=name, content_type="text/plain", session_id="s")
        found = await store.files.get(record.id)
        assert found is not None and found.name == name


# -- files on disk, upload limits, signed URLs (the database plays no part: SQLite only) ------


class TestFilesAndSignatures:
    @pytest.fixture
    def database_url(self, sqlite_url: str) -> str:
        return sqlite_url



    async def test_an_id_that_is_not_plain_alphanumerics_is_refused(self, files):
        for file_id in ("../secret.key", "..", "", "a/b", "a.b", ".part", "id\x00", "id with space", "%2e%2e"):
            with pytest.raises(ValueError, match="bad file id"):
                files.path(file_id)
            with pytest.raises(ValueError, match="bad file id"):
                await files.read(file_id)

    def test_check_refuses_a_file_over_the_size_limit(self, make_files):
        files = make_files(max_upload_bytes=MIB)
        files.check("exactly.bin", "application/octet-stream", MIB)  # at the limit: accepted
        with pytest.raises(FileRejected) as refused:
            files.check("big.bin", "application/octet-stream", MIB + 1)
        assert refused.value.code == "too_large"
        assert "'big.bin'" in str(refused.value) and "1 MiB" in str(refused.value)
        assert isinstance(refused.value, ValueError)

    def test_check_accepts_only_the_configured_types(self, make_files):
        files = make_files(accepted_types=["image/*", "application/pdf"])
        files.check("a.png", "image/png", 10)
        files.check("A.PNG", "IMAGE/PNG", 10)  # media types are case-insensitive
        files.check("d.pdf", "application/pdf", 10)
        for content_type in ("text/plain", "application/pdf+zip", ""):
            with pytest.raises(FileRejected) as refused:
                files.check("x", content_type, 10)
            assert refused.value.code == "unsupported_type"
        with pytest.raises(FileRejected, match="application/octet-stream"):
            files.check("unknown", "", 10)  # no type at all is judged as octet-stream

    def test_default_limits_accept_any_type_up_to_20_mib(self, files):
        files.check("x", "anything/at-all", 20 * MIB)
        with pytest.raises(FileRejected):
            files.check("x", "anything/at-all", 20 * MIB + 1)

    async def test_save_does_not_apply_the_upload_limits(self, make_files):
        """Limits are for uploads (the adapters call ``check`` first); a file the app itself saves
        (``session.show_image``) is stored whatever its size or type."""
        files = make_files(max_upload_bytes=10, accepted_types=["image/*"])
        record = await files.save(b"0123456789abc", name="app.txt", content_type="text/plain", session_id="s")
        assert await files.read(record.id) == b"0123456789abc"



    async def test_a_signed_url_verifies_for_its_file_and_session(self, files):
        record = await files.save(b"x", name="a.txt", content_type="text/plain", session_id="sess-1")
        url = files.signed_url(record.id, "sess-1")
        assert url.startswith(f"https://chat.example.com/files/{record.id}?")  # trailing slash dropped
        file_id, session_id, expires, signature = parts(url)
        assert (file_id, session_id) == (record.id, "sess-1")
        assert int(expires) == pytest.approx(time.time() + files.limits.url_ttl_seconds, abs=5)
        assert files.verify(file_id, session_id, expires, signature)

    def test_a_url_without_session_verifies_with_an_empty_session(self, files):
        file_id, session_id, expires, signature = parts(files.signed_url("FILE1", None))
        assert session_id == ""
        assert files.verify(file_id, "", expires, signature)
        assert not files.verify(file_id, "sess-1", expires, signature)

    def test_tampering_with_any_part_fails_verification(self, files):
        file_id, session_id, expires, signature = parts(files.signed_url("FILE1", "sess-1"))
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        assert not files.verify("FILE2", session_id, expires, signature)
        assert not files.verify(file_id, "sess-2", expires, signature)
        assert not files.verify(file_id, session_id, str(int(expires) + 3600), signature)  # a longer life
        assert not files.verify(file_id, session_id, expires, flipped)
        assert not files.verify(file_id, session_id, expires, signature[:-1])
        assert not files.verify(file_id, session_id, expires, "")
        assert not files.verify(file_id, session_id, expires, signature.upper())

    @pytest.mark.parametrize("expires", ["", "soon", "1e12", "12.5", "0x10", "∞", "١٢٣٤٥٦٧٨٩٠١٢"])
    def test_a_malformed_expiry_fails_verification(self, files, expires):
        file_id, session_id, _, signature = parts(files.signed_url("FILE1", "sess-1"))
        assert not files.verify(file_id, session_id, expires, signature)

    def test_an_expired_url_fails_verification(self, files):
        file_id, session_id, expires, signature = parts(files.signed_url("FILE1", "sess-1", ttl=-1))
        assert int(expires) < time.time()
        assert not files.verify(file_id, session_id, expires, signature)
        # A short ttl is honoured (it is not replaced by the configured one).
        _, _, soon, _ = parts(files.signed_url("FILE1", "sess-1", ttl=60))
        assert int(soon) == pytest.approx(time.time() + 60, abs=5)

    def test_a_signature_with_non_ascii_characters_fails_verification(self, files):
        """``?sig=%C3%A9`` reaches ``verify`` as ``"é"``: a refusal (403), not a TypeError (500)."""
        file_id, session_id, expires, signature = parts(files.signed_url("FILE1", "sess-1"))
        assert not files.verify(file_id, session_id, expires, "é" * len(signature))
        assert not files.verify(file_id, session_id, expires, signature[:-1] + "\u0660")

    def test_a_session_id_in_any_script_signs_and_verifies(self, files):
        file_id, session_id, expires, signature = parts(files.signed_url("FILE1", "сессия-🙂"))
        assert session_id == "сессия-🙂"
        assert files.verify(file_id, session_id, expires, signature)

    def test_urls_verify_across_file_stores_with_the_same_secret_only(self, make_files):
        """A worker signs, the web process verifies: the same secret is all they share."""
        signer, same, other = make_files(), make_files(), make_files(secret="another-secret-of-at-least-32-bytes")
        file_id, session_id, expires, signature = parts(signer.signed_url("FILE1", "sess-1"))
        assert same.verify(file_id, session_id, expires, signature)
        assert not other.verify(file_id, session_id, expires, signature)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(file_id=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=30),
           session_id=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
           bad_sig=st.text(max_size=40))
    def test_only_the_signature_made_for_a_file_and_session_verifies(self, files, file_id, session_id, bad_sig):
        url = files.signed_url(file_id, session_id)
        _, _, expires, signature = parts(url)
        assert files.verify(file_id, session_id, expires, signature)
        if bad_sig != signature:
            assert not files.verify(file_id, session_id, expires, bad_sig)

    async def test_the_root_is_created_on_first_save(self, make_files, tmp_path):
        files = make_files(dir=str(tmp_path / "not" / "yet" / "there"))
        assert not await asyncio.to_thread(files.root.exists)
        record = await files.save(b"x", name="x", content_type="text/plain", session_id=None)
        assert (files.root / record.id).read_bytes() == b"x"

    async def test_an_empty_file_and_a_file_without_session_round_trip(self, files):
        record = await files.save(b"", name="empty.txt", content_type="text/plain", session_id=None)
        assert record.size == 0 and record.session_id is None
        assert await files.read(record.id) == b""

    async def test_concurrent_saves_keep_every_file_apart(self, files):
        payloads = [f"file {n}".encode() * (n + 1) for n in range(8)]
        records = await asyncio.gather(*[
            files.save(data, name="same-name.txt", content_type="text/plain", session_id="s")
            for data in payloads])
        assert len({r.id for r in records}) == len(payloads)
        assert [await files.read(r.id) for r in records] == payloads

    async def test_a_name_never_chooses_where_the_file_is_written(self, files, tmp_path):
        outside = tmp_path.parent / "etc"
        records = [await files.save(b"payload", name=name, content_type="text/plain", session_id="s")
                   for name in TRAVERSAL_NAMES]
        # Kept as given, for display (the file route sanitises the header it puts the name in) ...
        assert [r.name for r in records] == TRAVERSAL_NAMES
        # ... while every file is written under its id in the root, nowhere else.
        assert sorted(p.name for p in files.root.iterdir()) == sorted(r.id for r in records)
        assert not outside.exists() and not (tmp_path / "etc").exists()
        assert all(files.path(r.id).resolve().parent == files.root.resolve() for r in records)

    async def test_a_missing_file_is_file_not_found(self, files):
        with pytest.raises(FileNotFoundError):
            await files.read("01JNOSUCHFILE0000000000000")
        record = await files.save(b"gone soon", name="a.txt", content_type="text/plain", session_id="s")
        files.path(record.id).unlink()  # the record outlived its file (a wiped disk)
        with pytest.raises(FileNotFoundError):
            await files.read(record.id)
