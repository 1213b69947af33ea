"""The local stack's STOMP broker: coilmq (pure Python, from PyPI) on loopback, for the carousel
flow's messages. Production points the flow at RabbitMQ's STOMP plugin or ActiveMQ instead.

A service of ``unembargo dev up`` (``broker``), or ``python -m unembargo.devstack.broker PORT``.
It keeps queued messages in memory: a restart loses what no consumer took yet, which a
production broker's persistent store does not.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from unembargo.devstack import procs
from unembargo.models.carousel import CarouselSettings
from unembargo.models.settings import Settings

NAME = "broker"
HOST = "127.0.0.1"

log = logging.getLogger(__name__)


def server(port: int, host: str = HOST) -> object:
    """A coilmq server bound to ``host:port`` (not yet serving); ``serve_forever`` runs it."""
    from coilmq.queue import QueueManager
    from coilmq.scheduler import FavorReliableSubscriberScheduler, RandomQueueScheduler
    from coilmq.server.socket_server import ThreadedStompServer
    from coilmq.store.memory import MemoryQueue
    from coilmq.topic import TopicManager

    ThreadedStompServer.allow_reuse_address = True
    return ThreadedStompServer(
        (host, port),
        queue_manager=QueueManager(
            store=MemoryQueue(),
            subscriber_scheduler=FavorReliableSubscriberScheduler(),
            queue_scheduler=RandomQueueScheduler(),
        ),
        topic_manager=TopicManager(),
    )


def start_thread(port: int, host: str = HOST) -> tuple[object, threading.Thread]:
    """A broker serving in a daemon thread of this process (tests); stop with ``stop_thread``."""
    srv = server(port, host)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    return srv, thread


def stop_thread(srv: object) -> None:
    srv.shutdown()  # type: ignore[attr-defined]
    srv.server_close()  # type: ignore[attr-defined]


def address(settings: Settings) -> str:
    config = CarouselSettings()
    return f"stomp://{config.broker_host}:{config.broker_port}"


def health(settings: Settings) -> tuple[bool, str]:
    config = CarouselSettings()
    if procs.recorded(settings.state_dir, NAME) is None:
        return False, "not running"
    if not procs.port_open(config.broker_host, config.broker_port):
        return False, "not listening"
    return True, "STOMP"


def ensure(settings: Settings) -> str:
    if health(settings)[0]:
        return "already up"
    port = CarouselSettings().broker_port
    if procs.port_open(HOST, port):
        return "another broker listens there; the flow uses it"
    procs.start(settings.state_dir, NAME, [sys.executable, "-m", "unembargo.devstack.broker", str(port)])
    procs.poll(lambda: procs.port_open(HOST, port), 15, f"the STOMP broker on {HOST}:{port}")
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    srv = server(args.port)
    log.info("STOMP broker on %s:%d", HOST, args.port)
    srv.serve_forever()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
