"""OrjsonResponse: a JSONResponse rendered by orjson (several times faster than the json module);
the app's default response class and the one the hot routes return."""

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
