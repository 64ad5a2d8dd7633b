"""GitHub: Elixir repositories found by GraphQL search, fetched as tarballs of one commit through REST.

A search returns at most 1,000 results however it is paged, so the query is split by creation date:
a range holding more than `search_cap` repositories is halved until each part fits, then paged with
cursors. The GraphQL `rateLimit` field and the HTTP rate-limit headers are both honoured. The licence
is `licenseInfo.spdxId`; the token comes from the environment (`GITHUB_TOKEN` by default).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from data_pipeline import PipelineError
from data_pipeline.sources import BadAnswer, Fetched, FetchFailed, Unit, expect
from data_pipeline.sources.http import HttpClient
from data_pipeline.sources.safe_tar import TarLimits, read_tar

SEARCH_QUERY = """
query($query: String!, $first: Int!, $after: String) {
  rateLimit { cost remaining resetAt }
  search(query: $query, type: REPOSITORY, first: $first, after: $after) {
    repositoryCount
    pageInfo { hasNextPage endCursor }
    nodes {
      ... on Repository {
        nameWithOwner
        url
        stargazerCount
        licenseInfo { spdxId }
        defaultBranchRef { target { oid } }
      }
    }
  }
}
"""

log = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_OID = re.compile(r"[0-9a-f]{40}")


@dataclasses.dataclass(frozen=True)
class GitHubConfig:
    api_url: str
    token_env: str
    min_stars: int
    pushed_since: str  # YYYY-MM-DD
    created_from: str  # YYYY-MM-DD: the search's date ranges start here
    created_until: str  # YYYY-MM-DD, or "" for today
    page_size: int
    search_cap: int  # GitHub's limit on the results of one search
    max_repos: int  # 0: all
    max_tarball_bytes: int
    max_uncompressed_bytes: int


class GitHubSource:
    def __init__(self, config: GitHubConfig, http: HttpClient, cache_dir: Path, wanted: Callable[[str], bool],
                 limits: TarLimits):
        token = os.environ.get(config.token_env)
        if not token:
            raise PipelineError(f"The GitHub source needs a token: export {config.token_env}=<a GitHub token> "
                                f"(GraphQL search requires one), or set sources.github.enabled=False.")
        self.config = config
        self.http = http
        self.cache_dir = cache_dir
        self.wanted = wanted
        self.limits = dataclasses.replace(limits, max_total_bytes=config.max_uncompressed_bytes)
        self.headers = {"authorization": f"bearer {token}"}

    async def units(self) -> AsyncIterator[Unit]:
        start = _date(self.config.created_from)
        end = _date(self.config.created_until) if self.config.created_until else dt.date.today()
        seen: set[str] = set()
        async for repo in self._search(start, end):
            try:
                name, oid, spdx = _found(repo)
            except BadAnswer as error:
                log.warning("Skipping a repository in GitHub's search answer: %s.", error)
                continue
            if name in seen:
                continue
            seen.add(name)
            yield Unit(id=f"github/{name}/{oid}", kind="github", package=name, version=oid[:12],
                       url=f"https://github.com/{name}/tree/{oid}", licences=(spdx,) if spdx else (),
                       fetch=lambda name=name, oid=oid: self.fetch(name, oid))
            if len(seen) == self.config.max_repos:
                return

    async def _search(self, start: dt.date, end: dt.date) -> AsyncIterator[dict[str, Any]]:
        query = (f"language:elixir stars:>={self.config.min_stars} pushed:>={self.config.pushed_since} "
                 f"fork:false created:{start.isoformat()}..{end.isoformat()}")
        page = await self._query(query, after=None)
        if page["count"] > self.config.search_cap and start < end:
            middle = start + (end - start) // 2
            async for repo in self._search(start, middle):
                yield repo
            async for repo in self._search(middle + dt.timedelta(days=1), end):
                yield repo
            return
        while True:
            for repo in page["nodes"]:
                if repo:
                    yield repo
            if page["end_cursor"] is None:
                return
            page = await self._query(query, after=page["end_cursor"])

    async def _query(self, query: str, after: str | None) -> dict[str, Any]:
        """One page of the search, checked: {"count": int, "nodes": list, "end_cursor": str | None (last page)}."""
        answer = expect(await self.http.post_json(
            f"{self.config.api_url}/graphql",
            {"query": SEARCH_QUERY, "variables": {"query": query, "first": self.config.page_size, "after": after}},
            headers=self.headers), dict, "GitHub's search answer")
        if errors := answer.get("errors"):
            messages = "; ".join(str(e.get("message", e) if isinstance(e, dict) else e)
                                 for e in expect(errors, list, "its errors"))
            raise FetchFailed(f"GitHub search {query!r} failed: {messages[:500]}")
        data = expect(answer.get("data"), dict, "its data")
        rate = expect(data.get("rateLimit") or {}, dict, "its rateLimit")
        if rate and expect(rate.get("remaining"), int, "rateLimit.remaining") < expect(rate.get("cost"), int,
                                                                                       "rateLimit.cost"):
            try:
                reset = dt.datetime.fromisoformat(expect(rate.get("resetAt"), str, "rateLimit.resetAt")
                                                  .replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise BadAnswer(f"rateLimit.resetAt {rate.get('resetAt')!r} is not a time") from None
            self.http.defer_host(self.config.api_url, reset)
        search = expect(data.get("search"), dict, "its search")
        page_info = expect(search.get("pageInfo"), dict, "search.pageInfo")
        more = expect(page_info.get("hasNextPage"), bool, "pageInfo.hasNextPage")
        return {"count": expect(search.get("repositoryCount"), int, "search.repositoryCount"),
                "nodes": expect(search.get("nodes"), list, "search.nodes"),
                "end_cursor": expect(page_info.get("endCursor"), str, "pageInfo.endCursor") if more else None}

    async def fetch(self, name: str, oid: str) -> Fetched:
        tarball = await self.http.download(f"{self.config.api_url}/repos/{name}/tarball/{oid}",
                                           self.cache_dir / f"{name.replace('/', '__')}-{oid}.tar.gz",
                                           max_bytes=self.config.max_tarball_bytes, headers=self.headers)
        return await asyncio.to_thread(self._read, tarball)

    def _read(self, tarball: Path) -> Fetched:
        with open(tarball, "rb") as stream:  # GitHub tarballs hold one top folder, owner-repo-sha/
            return read_tar(stream, compressed=True, wanted=self.wanted, limits=self.limits, strip_components=1,
                            name=tarball.name)


def _found(repo: Any) -> tuple[str, str, str | None]:
    """(owner/name, commit, SPDX id) of one search result, checked before any is used (they name cache files)."""
    repo = expect(repo, dict, "a search result")
    name = expect(repo.get("nameWithOwner"), str, "its nameWithOwner")
    branch = expect(repo.get("defaultBranchRef") or {}, dict, f"the default branch of {name[:60]!r}")
    oid = expect(expect(branch.get("target") or {}, dict, "its target").get("oid"), str, f"the commit of {name[:60]!r}")
    if not (_NAME.fullmatch(name) and _OID.fullmatch(oid)):
        raise BadAnswer(f"{name[:60]!r} at {oid[:60]!r} is not a valid repository and commit")
    spdx = expect(repo.get("licenseInfo") or {}, dict, f"the licence of {name}").get("spdxId")
    return name, oid, expect(spdx, (str, type(None)), f"the SPDX id of {name}")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"sources.github: {text!r} is not a date (YYYY-MM-DD).") from None
