"""A real Faust worker for the integration tests: consumes ECHO_IN, sends ``echo:<value>`` to ECHO_OUT.

Run as ``python faust_echo.py worker``; the app comes from ``stream_jobs.app.create_app`` so the
test exercises the project's own Faust configuration.
"""

import os

from monitor.config import Settings
from stream_jobs.app import create_app

settings = Settings(_env_file=None)
app = create_app(settings, app_id=os.environ["ECHO_APP_ID"])
source = app.topic(os.environ["ECHO_IN"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def echo(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value=b"echo:" + event.value)


if __name__ == "__main__":
    app.main()
