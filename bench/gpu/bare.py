"""Fails unless this Python lacks what the GPU host lacks (pydantic, dlib, face-recognition-models
and the service's own dependencies), so that the rehearsal imports no more than the host has."""

import importlib.util
import sys

ABSENT = ("pydantic", "pydantic_settings", "dlib", "face_recognition_models", "celery", "sqlalchemy", "redis")

present = [name for name in ABSENT if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"{sys.executable} is not bare like the GPU host: it has {', '.join(present)}")
print(f"{sys.executable}: none of {', '.join(ABSENT)}")
