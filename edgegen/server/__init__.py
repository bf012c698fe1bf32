"""`edgegen serve`: an OpenAI-compatible local server with a browser chat page.

    from edgegen.server import ThreadedServer, create_app
    with ThreadedServer(create_app(edgegen.load("tiny-chat"), model_id="tiny-chat")) as url:
        ...  # POST f"{url}/v1/chat/completions"

Needs Starlette and uvicorn (`pip install 'edgegen[serve]'`).
"""

from edgegen.server._run import LOOPBACK, ThreadedServer, bind, run, url_of
from edgegen.server.app import create_app

__all__ = ["LOOPBACK", "ThreadedServer", "bind", "create_app", "run", "url_of"]
