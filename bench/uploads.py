"""Uploads in process (issue 28): a 20 MB file's `POST /uploads/`, and a photo's thumbnail.

`python -m bench.uploads` sets Django up on a SQLite database and a media
folder of its own (in a temporary directory, removed afterwards), then times,
each `--repeat` times (best and median printed):

- `upload 20 MB`: `chat.upload_views.upload` on a request RequestFactory built
  beforehand (the multipart body in memory, not timed): Django's parser
  streaming the file to a temporary file, the type read from its bytes, the
  copy into storage, the row. Not a file type that is re-encoded: the path
  most bytes take. MB/s is 20 MiB over the best time.
- `photo store`: `chat.uploads.store` of a 12-megapixel JPEG (4032x3024, a
  camera's): decoded, turned upright, written anew without metadata, its
  thumbnail made, both stored.
- `thumbnail`: `chat.uploads._thumbnail` alone on that photo, decoded
  beforehand: the 480 px WebP.

No socket, no network and no other process: the server's own CPU for these
steps on this machine, not a client's experience over a link.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _timed(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-uploads-"))
    try:
        _measure(folder, args.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: Path, repeat: int) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DEBUG="true",
        DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}",
        MEDIA_ROOT=str(folder / "media"),
        CHAT_UPLOADS_PER_MINUTE="0",
        CHAT_UPLOAD_QUOTA_BYTES=str(1 << 40),
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command
    from django.test import RequestFactory
    from PIL import Image

    from chat import uploads
    from chat.upload_views import upload

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench-uploader")
    size = 20 * 1024 * 1024
    data = os.urandom(size)

    def post() -> None:
        request = requests.pop()
        request.user = user
        request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        response = upload(request)
        assert response.status_code == 201, response.content

    requests = [
        RequestFactory().post(
            "/uploads/",
            {"file": SimpleUploadedFile("big.bin", data)},
            headers={"X-CSRFToken": "not-checked-here"},
        )
        for _ in range(repeat)
    ]
    best, median = _timed(post, repeat)
    print(
        f"upload 20 MB:  best {best * 1000:.0f} ms, median {median * 1000:.0f} ms"
        f"  ({size / best / 1024 / 1024:.0f} MiB/s)"
    )

    photo = Image.effect_noise((4032, 3024), 40).convert("RGB")
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90)
    jpeg = out.getvalue()
    best, median = _timed(
        lambda: uploads.store(user, ContentFile(jpeg, name="photo.jpg"), "photo.jpg"), repeat
    )
    print(
        f"photo store:   best {best * 1000:.0f} ms, median {median * 1000:.0f} ms"
        f"  (12 MP JPEG, {len(jpeg) / 1024 / 1024:.1f} MiB)"
    )
    decoded = Image.open(io.BytesIO(jpeg))
    decoded.load()
    best, median = _timed(lambda: uploads._thumbnail(decoded), repeat)
    print(f"thumbnail:     best {best * 1000:.0f} ms, median {median * 1000:.0f} ms")


if __name__ == "__main__":
    main()
