"""`python -m api`: uvicorn serving create_app() on settings.api_host:settings.api_port."""

import uvicorn

from shared.logs import configure_logging
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the structured handlers of configure_logging
        access_log=False,  # api.app logs each request itself
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
