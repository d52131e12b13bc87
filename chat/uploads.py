"""Uploaded files (issue 28): the rules, apart from HTTP.

A file goes up over HTTP apart from any message (`chat.upload_views`) and is
stored through Django's storage API under a random name; a send refers to it
by id later. Its type is found from its bytes, never taken from the browser.
Images in the four types browsers show inline are decoded with Pillow: the
EXIF orientation is applied and the file is written anew, so that nothing of
its metadata (GPS position, camera) is stored, and a thumbnail is made.
"""

from __future__ import annotations

import io
import logging
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.utils import timezone
from PIL import Image, ImageOps, UnidentifiedImageError

from chat.models import Message, Upload

logger = logging.getLogger(__name__)

# Types shown inline by the page and served `inline`; every other type is
# served as an attachment (SVG and HTML included: they may carry script).
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
NAME_MAX = 200
THUMB_MAX = 480
# What a multipart body adds around the file: boundaries, part headers.
MULTIPART_OVERHEAD = 64 * 1024
# Uploads never sent are removed after this long (`manage.py removeuploads`).
UNSENT_LIFETIME = timedelta(hours=24)

_PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
# The size check is ours (`_open_image`): Pillow's own warning adds nothing.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True, slots=True)
class UploadError(Exception):
    """A refused upload: HTTP status, the `error` code, and words for people."""

    status: int
    code: str
    message: str


def clean_name(raw: str) -> str:
    """The file's name as shown and sent back: no path, no control characters, ≤200 chars."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if not unicodedata.category(c).startswith("C")).strip()
    name = name.strip(".") or "file"
    if len(name) > NAME_MAX:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: NAME_MAX - len(ext) - 1] + "." + ext
        else:
            name = name[:NAME_MAX]
    return name


def sniff_type(head: bytes) -> str:
    """The content type the first bytes of a file show (application/octet-stream if none)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"PK\x03\x04"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:10] == b"qt" else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith((b"BM",)) and len(head) > 14:
        return "image/bmp"
    return _text_type(head)


def _text_type(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sample is still text.
        if exc.start < len(head) - 4:
            return "application/octet-stream"
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text:
        return "application/octet-stream"
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in lowered[:1024]:
        return "image/svg+xml"
    if lowered.startswith(("<!doctype html", "<html", "<head", "<body", "<script", "<iframe")):
        return "text/html"
    if lowered.startswith("<?xml"):
        return "application/xml"
    return "text/plain"


def check_size(size: int) -> None:
    if size > settings.CHAT_UPLOAD_MAX_BYTES:
        raise too_large()


def too_large() -> UploadError:
    limit = settings.CHAT_UPLOAD_MAX_BYTES
    return UploadError(413, "too_large", f"files may be at most {_human(limit)}")


def check_quota(user_id: int, size: int) -> None:
    """Refuse a file that would take the user's stored files past CHAT_UPLOAD_QUOTA_BYTES."""
    stored = stored_bytes(user_id)
    limit = settings.CHAT_UPLOAD_QUOTA_BYTES
    if stored + size > limit:
        raise UploadError(
            413, "quota", f"your files may take {_human(limit)} in all; {_human(stored)} are used"
        )


def stored_bytes(user_id: int) -> int:
    total = Upload.objects.filter(uploader_id=user_id).aggregate(total=models.Sum("size"))
    return int(total["total"] or 0)


def store(user: User, file: File[Any], raw_name: str) -> Upload:
    """Check and store one uploaded file; UploadError when refused."""
    size = file.size or 0
    if size <= 0:
        raise UploadError(400, "bad_file", "the file is empty")
    check_size(size)
    check_quota(user.pk, size)
    file.seek(0)
    kind = sniff_type(file.read(2048))
    file.seek(0)
    upload = Upload(
        uploader=user, name=clean_name(raw_name), content_type=kind, created=timezone.now()
    )
    thumb: bytes | None = None
    content: File[Any] = file
    if kind in INLINE_TYPES:
        data, thumb, upload.width, upload.height = _clean_image(file, kind)
        content = ContentFile(data)
    upload.size = content.size or 0
    upload.storage_name = default_storage.save(f"uploads/{upload.id}", content)
    try:
        if thumb is not None:
            upload.thumb_name = default_storage.save(
                f"uploads/{upload.id}-thumb", ContentFile(thumb)
            )
        upload.save(force_insert=True)
    except BaseException:
        _delete_files(upload)
        raise
    return upload


def _open_image(source: IO[bytes]) -> Image.Image:
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise _bomb() from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UploadError(400, "bad_file", "the image cannot be read") from exc
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise _bomb()
    return image


def _bomb() -> UploadError:
    return UploadError(400, "bad_file", "the image has too many pixels")


def _clean_image(file: File[Any], kind: str) -> tuple[bytes, bytes, int, int]:
    """The image written anew without metadata, its thumbnail, width and height."""
    image = _open_image(file)
    fmt = image.format or ""
    if _PIL_FORMATS.get(fmt) != kind:
        raise UploadError(400, "bad_file", "the image cannot be read")
    try:
        animated = getattr(image, "n_frames", 1) > 1
        if animated:
            data = _reencode_animation(image, fmt)
        else:
            image.load()
            image = ImageOps.exif_transpose(image)
            data = _reencode(image, fmt)
        image.seek(0)
        thumb = _thumbnail(image)
    except UploadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UploadError(400, "bad_file", "the image cannot be read") from exc
    return data, thumb, image.width, image.height


def _reencode(image: Image.Image, fmt: str) -> bytes:
    """The pixels alone: no EXIF, XMP, comments or text chunks are carried over."""
    kept: dict[str, Any] = {
        k: image.info[k] for k in ("transparency", "icc_profile") if k in image.info
    }
    image.info = {k: v for k, v in kept.items()}
    out = io.BytesIO()
    if fmt == "JPEG":
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
        image.save(out, "JPEG", quality=92, icc_profile=kept.get("icc_profile"))
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=92, icc_profile=kept.get("icc_profile"))
    else:
        image.save(out, fmt, **kept)
    return out.getvalue()


def _reencode_animation(image: Image.Image, fmt: str) -> bytes:
    kept: dict[str, Any] = {
        k: image.info[k] for k in ("duration", "loop", "transparency") if k in image.info
    }
    image.info = {k: v for k, v in kept.items()}
    out = io.BytesIO()
    image.save(out, fmt, save_all=True, **kept)
    return out.getvalue()


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGBA" if _has_alpha(image) else "RGB")
    thumb.thumbnail((THUMB_MAX, THUMB_MAX))
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=80)
    return out.getvalue()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def upload_json(upload: Upload) -> dict[str, Any]:
    """The upload as the protocol and `POST /uploads/` describe it (site-relative URLs)."""
    return {
        "upload": upload.id,
        "name": upload.name,
        "size": upload.size,
        "type": upload.content_type,
        "width": upload.width,
        "height": upload.height,
        "url": f"/uploads/{upload.id}",
        "thumb": f"/uploads/{upload.id}/thumb" if upload.thumb_name else None,
    }


def may_download(user: User | Any, upload: Upload) -> bool:
    """The uploader, and users who may read a message carrying the file now (as `history`).

    A deleted message's files are gone (they 404 for the uploader too).
    """
    if not getattr(user, "is_authenticated", False):
        return False
    mine = bool(upload.uploader_id == user.pk)
    if upload.message_id is None:
        return mine
    carrying = Message.objects.filter(pk=upload.message_id, deleted=False)
    if not mine:
        carrying = carrying.visible_to(user.pk)
    return carrying.exists()


def downloadable(user: User | Any, upload_id: str) -> Upload | None:
    """The upload if `user` may download it; None for a missing one alike."""
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is None or not may_download(user, upload):
        return None
    return upload


def remove_unsent(*, now: Any = None) -> int:
    """Remove uploads never sent within UNSENT_LIFETIME (their files too); how many."""
    cutoff = (now or timezone.now()) - UNSENT_LIFETIME
    removed = 0
    for upload in Upload.objects.filter(message__isnull=True, created__lt=cutoff).iterator():
        upload.delete()
        removed += 1
    return removed


def totals() -> tuple[int, int]:
    """Uploads stored and their bytes, for /metrics."""
    row = Upload.objects.aggregate(count=models.Count("pk"), total=models.Sum("size"))
    return int(row["count"] or 0), int(row["total"] or 0)


def _delete_files(upload: Upload) -> None:
    for name in (upload.storage_name, upload.thumb_name):
        if not name:
            continue
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete the stored file %s", name, exc_info=True)


def _files_deleted(sender: type[Upload], instance: Upload, **kwargs: Any) -> None:
    """An upload's row going (its message, its uploader, removeuploads) takes its files.

    Once the deletion commits: a transaction rolled back keeps row and files.
    """
    transaction.on_commit(lambda: _delete_files(instance))


def connect_upload_signals() -> None:
    post_delete.connect(_files_deleted, sender=Upload, dispatch_uid="chat.uploads.files")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} GiB"
