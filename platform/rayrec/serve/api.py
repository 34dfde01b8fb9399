"""The HTTP API: versioned pydantic request/response models and the FastAPI ingress, which is the
retrieval deployment.

HTTP lands on a retrieval replica directly: validation, the batched retrieval stage and the answer
happen in one process, so a request pays one proxy hop and shares the ranking hop with its batch
(a separate ingress deployment cost a hop and ~5 ms of CPU per request on 2 cores). Every
recommendation is composed by one replica from one release. Errors are JSON with a
reason: 404 unknown item, 422 bad fields (k out of bounds, non-finite numbers, unknown event
types), 503 with ``Retry-After`` when a stage's queue is full, and no stack traces ever.
``POST /v1/search`` runs the search stage (search.py) in the same replica; ``GET /`` is the storefront
page (static/storefront.html), which uses nothing but these routes.
"""

import logging
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve.exceptions import BackPressureError

from rayrec.serve.auth import AuthRejected, Scope, guard_from_config
from rayrec.serve.catalog import ItemFilter
from rayrec.serve.feature_store import EVENT_STAGES, OnlineEvent
from rayrec.serve.retrieval import RecommendQuery, RetrievalStage
from rayrec.serve.search import SearchQuery, SearchStage

log = logging.getLogger(__name__)

FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # clocks drift; an event minutes ahead is still accepted
RETRY_AFTER_S = "1"
STOREFRONT_PAGE = Path(__file__).with_name("static") / "storefront.html"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class Filters(Strict):
    category: str | None = Field(None, min_length=1, max_length=200,
                                 description="Category path prefix, e.g. 'Electronics' or 'Electronics > Phones'.")
    brand: str | None = Field(None, min_length=1, max_length=200, description="Exact brand (case-insensitive).")
    price_min: float | None = Field(None, ge=0, description="Lowest price.")
    price_max: float | None = Field(None, ge=0, description="Highest price.")

    @model_validator(mode="after")
    def _bounds(self) -> "Filters":  # noqa: UP037 - FastAPI reads these annotations at run time
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min must be <= price_max")
        return self

    def to_item_filter(self) -> ItemFilter:
        return ItemFilter(category=self.category, brand=self.brand, price_min=self.price_min, price_max=self.price_max)


class RecommendRequest(Strict):
    user_id: str = Field(min_length=1, max_length=128, description="Any user id; unknown users get the "
                         "cold-start path.")
    k: int = Field(10, ge=1, description="Items wanted (at most serve.max_k).")
    filters: Filters = Field(default_factory=Filters)
    exclude_purchased: bool = Field(True, description="Leave out items the user bought.")
    context: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32,
                                                         description="Request context (page, device, ...), logged.")


class Item(BaseModel):
    item_id: str
    title: str | None
    category: str | None
    brand: str | None
    price: float | None
    score: float
    retrieval_score: float | None = None


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    version: str = Field(description="Release that produced every item of this answer.")
    cold_start: bool = Field(description="The user had no usable history.")
    reranked: bool = Field(description="The ranker ordered the candidates.")
    took_ms: float


class SearchRequest(Strict):
    query: str = Field(description="What the shopper typed (at most search.max_query_chars characters).")
    user_id: str | None = Field(None, min_length=1, max_length=128, description="Known users get results "
                                "re-ordered by their history; omit for anonymous search.")
    k: int = Field(10, ge=1, description="Items wanted (at most serve.max_k).")
    filters: Filters = Field(default_factory=Filters)


class Sources(BaseModel):
    lexical: int | None = Field(description="Rank in the lexical (BM25) candidates; null: not found there.")
    semantic: int | None = Field(description="Rank in the semantic (MiniLM) candidates; null: not found there.")


class SearchItem(Item):
    score: float = Field(description="Text relevance: the reciprocal-rank fusion score.")
    sources: Sources


class SearchResponse(BaseModel):
    query: str
    items: list[SearchItem] = Field(description="Best first; re-ordered for the user when personalized.")
    personalized: bool = Field(description="The ranker re-ordered the results with the user's history.")
    reason: str | None = Field(description="Why there are no items, when there are none.")
    version: str
    took_ms: float


class EventIn(Strict):
    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    event_type: Literal["view", "click", "add_to_cart", "purchase"]
    ts_ms: int | None = Field(None, ge=0, description="Event time in ms since the epoch (null: now).")


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1)


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events stored durably; they shape the user's next recommendation.")


class SimilarResponse(BaseModel):
    item: Item | dict[str, Any]
    items: list[Item]
    version: str


def _unprocessable(field: list[str | int], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(422, detail=[{"loc": field, "msg": message, "type": "value_error"}])


class BodySizeLimit:
    """413 with a JSON reason for a body over ``app.state.max_body_bytes``: refused up front when its
    Content-Length says so, cut off while streaming when it grows past the limit (chunked bodies).
    FastAPI's own ``max_body_size`` answers in plain text, so it is left unset."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = getattr(scope["app"].state, "max_body_bytes", None) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        reason = f"request body is over the {limit}-byte limit (serve.max_body_bytes); send less per request"
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await JSONResponse({"detail": reason}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # FastAPI re-raises HTTPException from a body read; its handler answers JSON
                raise HTTPException(413, detail=reason)
            return message

        await self.app(scope, counted_receive, send)


def build_fastapi() -> FastAPI:
    api = FastAPI(title="rayrec", version="1", description="Recommendations, events and similar items.")
    api.add_middleware(BodySizeLimit)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the offending input, which cannot be JSON when it is NaN or Infinity;
        # field, message and type are the reason.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    # A specific handler, not a branch of the catch-all below: Starlette runs Exception handlers in
    # its outermost middleware, after the error has already escaped the route.
    @api.exception_handler(BackPressureError)
    async def _overloaded(request: Request, error: BackPressureError) -> JSONResponse:
        return JSONResponse({"detail": "overloaded: a serving stage's queue is full; retry shortly"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    @api.exception_handler(Exception)
    async def _any_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the replica log"},
                            status_code=500)

    return api


api = build_fastapi()
api.state.guard = None  # set per replica from serve.auth (one Retrieval per replica process)

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key> (when serve.auth.required)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key (when serve.auth.required)")


def access(scope: Scope) -> Any:
    """A route dependency: the caller's key must hold ``scope`` and be under its rate (401/403/429)."""

    async def check(request: Request, bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
                    api_key: str | None = Security(_api_key)) -> str | None:
        guard = request.app.state.guard
        if guard is None:
            return None
        try:
            return guard.check(bearer.credentials if bearer else api_key, scope)
        except AuthRejected as e:
            raise HTTPException(e.status, detail=e.reason, headers=e.headers) from None

    return Depends(check)


# Decorated here, at import, not in app.py: replicas import this module afresh, and the routes must
# already be bound to the class there (decorating a driver-side copy leaves `self` a query field).
@serve.ingress(api)
class Retrieval:
    """Serve deployment (made one in ``app.py``): the HTTP routes over this replica's retrieval stage."""

    def __init__(self, release_dir: str, serve_cfg: dict[str, Any], ranking: Any | None,
                 search_cfg: dict[str, Any] | None = None) -> None:
        from rayrec.config import SearchConfig, ServeConfig
        from rayrec.runtime import set_threads

        self.cfg = ServeConfig.model_validate(serve_cfg)
        set_threads(self.cfg.retrieval.threads)
        api.state.guard = guard_from_config(self.cfg.auth)
        api.state.max_body_bytes = self.cfg.max_body_bytes
        self.stage = RetrievalStage(release_dir, self.cfg, ranking)
        self.search_cfg = SearchConfig.model_validate(search_cfg or {"enabled": False})
        has_index = self.stage.core.release.manifest.search is not None
        self.search_stage = (SearchStage(self.stage, self.search_cfg)
                             if self.search_cfg.enabled and has_index else None)
        self.storefront_html = STOREFRONT_PAGE.read_text(encoding="utf-8")

    def _check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise _unprocessable(["body", "k"], f"k must be <= {self.cfg.max_k} (serve.max_k); got {k}")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def storefront(self) -> HTMLResponse:
        """The storefront page: search, recommendations and similar items over this API."""
        return HTMLResponse(self.storefront_html)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        try:
            info = await self.stage.ready()
        except Exception as e:  # not ready is an answer, not an error
            return JSONResponse({"ready": False, "reason": f"retrieval not ready: {type(e).__name__}"},
                                status_code=503, headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"ready": True, **info})

    @api.post("/v1/recommend", response_model=RecommendResponse, dependencies=[access("read")])
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        self._check_k(body.k)
        started = time.perf_counter()
        query = RecommendQuery(user_id=body.user_id, k=body.k, item_filter=body.filters.to_item_filter(),
                               exclude_purchased=body.exclude_purchased)
        result = await self.stage.recommend(query)
        return RecommendResponse(user_id=body.user_id, items=result["items"], version=result["version"],
                                 cold_start=result["cold_start"], reranked=result["reranked"],
                                 took_ms=round((time.perf_counter() - started) * 1000, 3))

    @api.post("/v1/search", response_model=SearchResponse, dependencies=[access("read")])
    async def search(self, body: SearchRequest) -> SearchResponse:
        if self.search_stage is None:
            raise HTTPException(404, detail="search is not enabled for this release (search.enabled, then "
                                "rebuild the release with `rayrec build-index`)")
        limit = self.search_cfg.max_query_chars
        if not body.query:
            raise _unprocessable(["body", "query"], "query is empty; send the words to search for")
        if len(body.query) > limit:
            raise _unprocessable(["body", "query"], f"query is {len(body.query)} characters; at most {limit} "
                                 "(search.max_query_chars)")
        self._check_k(body.k)
        started = time.perf_counter()
        result = await self.search_stage.search(SearchQuery(query=body.query, k=body.k, user_id=body.user_id,
                                                            item_filter=body.filters.to_item_filter()))
        return SearchResponse(query=body.query, items=result["items"], personalized=result["personalized"],
                              reason=result["reason"], version=result["version"],
                              took_ms=round((time.perf_counter() - started) * 1000, 3))

    @api.post("/v1/events", response_model=EventsResponse, dependencies=[access("write")])
    async def events(self, body: EventsRequest) -> EventsResponse:
        limit = self.cfg.max_events_per_request
        if len(body.events) > limit:
            raise _unprocessable(["body", "events"], f"at most {limit} events per request "
                                 f"(serve.max_events_per_request); got {len(body.events)}; split the batch")
        now = int(time.time() * 1000)
        for i, e in enumerate(body.events):
            if e.ts_ms is not None and e.ts_ms > now + FUTURE_TOLERANCE_MS:
                raise _unprocessable(["body", "events", i, "ts_ms"], "ts_ms is in the future; send the event "
                                     "time in milliseconds since the epoch, or omit it for 'now'")
        events = [OnlineEvent(user_id=e.user_id, item_id=e.item_id, stage=EVENT_STAGES[e.event_type],
                              ts_ms=e.ts_ms if e.ts_ms is not None else now) for e in body.events]
        return EventsResponse(accepted=await self.stage.store.append(events))

    @api.get("/v1/items/{item_id}/similar", response_model=SimilarResponse, dependencies=[access("read")])
    async def similar(self, item_id: str, k: int = 10) -> SimilarResponse:
        if not 1 <= k <= self.cfg.max_k:
            raise _unprocessable(["query", "k"], f"k must be between 1 and {self.cfg.max_k}; got {k}")
        result = self.stage.core.similar(item_id, k)
        if result is None:
            raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
        return SimilarResponse(**result)
