"""The Redis transport, made safe against poison bytes on a queue.

kombu's Redis channel decodes each popped message as JSON inside its polling loop; bytes that are
not a JSON message envelope raise there and stop the worker ("Unrecoverable error"), and since
the bytes are already popped the next one may do the same: a crash loop. SafeRedisTransport logs
such a message (never its payload) and drops it. celeryconfig names it as broker_transport.
"""

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class SafeChannel(kombu_redis.Channel):
    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except (ValueError, TypeError, KeyError) as exc:  # JSON or envelope errors of one message
            log.error("dropped a message that is not a JSON message envelope", extra={"error": type(exc).__name__})
            raise kombu_redis.Empty() from None


class SafeRedisTransport(kombu_redis.Transport):
    Channel = SafeChannel
