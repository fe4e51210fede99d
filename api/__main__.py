"""`python -m api`: uvicorn serving create_app() on settings.api_host:settings.api_port, and the
API's Prometheus metrics on settings.metrics_host:settings.metrics_port (a port the ingress does
not expose). One process; scale with more of them.
"""

import uvicorn

from shared.logs import configure_logging
from shared.settings import get_settings


def main() -> None:
    from api.app import create_app
    from api.metrics import start_metrics_server

    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    start_metrics_server(app.state.metrics, settings.metrics_port, settings.metrics_host)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the structured handlers of configure_logging
        access_log=False,  # api.app logs each request itself
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


if __name__ == "__main__":
    main()
