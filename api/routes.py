"""The API's routes, to be served by the web app's own FastAPI server (see app.py).

Every route checks the API key first, and answers any failure in OpenAI's error shape:
never a traceback, and the server lives on.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from starlette.routing import BaseRoute

from api.answering import ClientGone
from api.errors import ApiError
from api.openai_routes import chat_completions, list_models
from api.options import ApiOptions, check_key
from api.visualglm_route import visualglm_chat
from serving.scheduler import Scheduler

log = logging.getLogger(__name__)
Handler = Callable[[Request, Scheduler, ApiOptions], Awaitable[Response] | Response]


def api_routes(scheduler: Scheduler, options: ApiOptions) -> list[BaseRoute]:
    router = APIRouter()

    def endpoint(handler: Handler):
        async def guarded(request: Request) -> Response:
            try:
                check_key(request, options)
                response = handler(request, scheduler, options)
                return await response if isinstance(response, Awaitable) else response
            except ApiError as exc:
                return exc.response()
            except ClientGone:
                return Response(status_code=499)
            except Exception:  # a bug of ours: logged here, a clean 500 for the client
                log.exception("the API failed on %s", request.url.path)
                return ApiError(500, "The server failed on this request. Please try again.").response()
        return guarded

    router.add_api_route("/v1/models", endpoint(lambda request, s, o: list_models(s)), methods=["GET"])
    router.add_api_route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"])
    router.add_api_route("/", endpoint(visualglm_chat), methods=["POST"])  # GET / stays the web page
    return router.routes
