"""The serving commands of ``crossan``: ``recommend``, ``embed-items`` and ``export``.

Part of the command-line layer (:mod:`crossan.cli` registers them): argument parsing and printing only;
the work is :mod:`crossan.serve`, :mod:`crossan.coldstart` and :mod:`crossan.export`, imported when a
command runs, so that ``crossan --help`` loads no model code.
"""

from __future__ import annotations

import contextlib
import csv
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossan.errors import ServeError, UnknownItemError

TAB_HINT = ("; this run's item ids hold spaces, so separate a history's items by tabs ('user TAB item TAB item'; "
            "a history of one item ends with a tab)")
"""Said where a ``--users`` file of such a run names unknown ids (an id split at its spaces)."""

USERS_PER_CHUNK = 4096
"""`recommend --users`: histories scored and written at a time (the CSV is streamed to a temporary file)."""


@contextlib.contextmanager
def run_warnings() -> Iterator[None]:
    """Print each :class:`~crossan.runs.RunWarning` (an unfinished run, a plugin's changed code) as one
    ``crossan: warning: …`` line on stderr when it is raised (other warnings are shown as Python shows them)."""
    from crossan.runs import RunWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", RunWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(category, RunWarning):
                print(f"crossan: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def read_users_file(path: str | Path, tabs: bool = False) -> list[tuple[str, list[str], int]]:
    """``user TAB item item …`` lines (the IISAN users.tsv layout) → (user, items, line number). Items are
    separated by ASCII whitespace, as the dataset readers split users.tsv. With ``tabs`` (a run whose item ids
    hold spaces, as a CSV or RecBole dataset's can), a line with a tab after the user's is split at tabs only
    (``user TAB item TAB item``; a history of one such item ends with a tab).

    Decoded as the dataset readers decode text: a UTF-8 BOM is dropped, CR/CRLF line ends are read as line
    ends, and a byte that is not UTF-8 is an error naming the file and line."""
    from crossan.data.readers import DataError
    from crossan.data.textscan import SPACES, TextError, decode_text

    ascii_space_run = re.compile(f"[{re.escape(SPACES)}]+")

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; --users takes a file of 'user TAB item item …' lines")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = decode_text(path.read_bytes(), path)
    except TextError as e:
        raise DataError(str(e)) from None
    out = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):  # "\n" only: line numbers as the error's
        if not line.strip(SPACES):
            continue
        user, sep, rest = line.partition("\t")
        user = user.strip(SPACES)
        if not sep or not user:
            raise DataError(f"{path}:{lineno}: expected 'user TAB item item …'")
        if user in seen:
            raise DataError(f"{path}:{lineno}: user {user!r} appears again (first on line {seen[user]})")
        seen[user] = lineno
        # split at ASCII whitespace only, as the dataset readers split users.tsv ("a\xa0b" is one id there)
        items = ([i.strip(SPACES) for i in rest.split("\t") if i.strip(SPACES)] if tabs and "\t" in rest
                 else ascii_space_run.split(rest.strip(SPACES)) if rest.strip(SPACES) else [])
        if not items:
            raise ServeError(f"{path}:{lineno}: user {user!r} has an empty history")
        out.append((user, items, lineno))
    if not out:
        raise DataError(f"{path}: no users")
    return out


def check_out_file(path: Path) -> None:
    """Refuse, before any scoring, an ``--out`` file that is a folder or whose folder cannot be written."""
    import os

    if path.is_dir():
        raise ServeError(f"{path}: is a folder; --out takes a file name (the CSV to write)")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ServeError(f"{path}: cannot be created because {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ServeError(f"{path}: cannot write in {existing} (read-only or no permission)")
    from crossan.utils import NAME_MAX, temporary_path

    longest = len(temporary_path(path, ".tmp").name.encode("utf-8", "surrogateescape"))
    if longest > NAME_MAX:  # the file is written beside itself first, under a longer name
        size = len(path.name.encode("utf-8", "surrogateescape"))
        raise ServeError(f"{path.name[:60]}…: the file name is too long ({size} bytes; at most "
                         f"{size - (longest - NAME_MAX)} here, as it is first written under a temporary name "
                         "beside it)")


def cmd_recommend(args: Any) -> int:
    with run_warnings():  # loading and scoring: a NonFiniteScoreWarning is one line too
        return _recommend(args)


def _recommend(args: Any) -> int:
    from crossan.serve import load_recommender
    from crossan.utils import atomic_write

    if (args.history is None) == (args.users is None):
        raise ServeError("give either --history ITEM [ITEM …] or --users FILE")
    if args.k < 1:
        raise ServeError(f"--k must be at least 1, got {args.k}")
    if args.users is not None and not args.out:
        raise ServeError("--users needs --out FILE (the CSV of recommendations)")
    if args.history is not None and args.out:  # one history's list goes to the terminal
        raise ServeError("--out writes the CSV of a --users FILE; with --history the list is printed (redirect "
                         "it to keep it)")
    if args.out:
        check_out_file(Path(args.out))
        if Path(args.out).resolve() == Path(args.users).resolve():
            raise ServeError(f"{args.out}: is the --users file itself; writing the recommendations there would "
                             "replace the histories they come from; choose another --out")
        out, run = Path(args.out).resolve(), Path(args.run_dir).resolve()
        if run in out.parents and out.exists() and out.suffix.lower() != ".csv":  # its weights, config, results …
            raise ServeError(f"{args.out}: is a file of the run folder {args.run_dir}; writing the recommendations "
                             "there would replace it; choose another --out")
    with run_warnings():
        rec = load_recommender(args.run_dir, device=args.device, data_path=args.run_data)
    # --include-history / --exclude-history, else the run's eval.mask_history (as its metrics were computed)
    exclude = rec.mask_history if args.exclude_history is None else args.exclude_history
    if args.history is not None:
        history = args.history
        if args.unknown_items == "skip":
            history, dropped = rec.known(history)
            if dropped:
                print(f"note: skipped {len(dropped)} unknown item id(s): {', '.join(map(repr, dropped[:10]))}"
                      + (" …" if len(dropped) > 10 else ""), file=sys.stderr)
            if not history:
                raise ServeError("--history: no item id of the history is known to the run (all were skipped)")
        items = rec.recommend(history, k=args.k, exclude_history=exclude)
        if not items:  # rc 1: nothing was recommended (documented in the command's help)
            print(f"crossan: no items to recommend: the history covers all {rec.num_candidates} candidate items "
                  "and history items are excluded (--include-history ranks them too)", file=sys.stderr)
            return 1
        w = max([len("item_id")] + [len(r.item_id) for r in items])
        print(f"{'rank':>4}  {'item_id':<{w}}  {'score':>10}  title")
        for n, r in enumerate(items, 1):
            score = f"{r.score:>10.4f}" if not abs(r.score) >= 1e6 else f"{r.score:>10.4g}"  # no 40-digit scores
            print(f"{n:>4}  {r.item_id:<{w}}  {score}  {r.title}")
        if len(items) < args.k:
            print(f"note: only {len(items)} of the {rec.num_candidates} candidate items are not in the history"
                  if len(items) < rec.num_candidates else  # history included, or nothing of it excluded
                  f"note: --k {args.k} is more than the run's {rec.num_candidates} candidate items: all are shown",
                  file=sys.stderr)
        return 0
    from crossan.data.textscan import SPACES

    spaced = any(not set(SPACES).isdisjoint(i) for i in rec.item_ids)  # such ids are separated by tabs
    users = read_users_file(args.users, tabs=spaced)
    if args.unknown_items == "skip":  # drop what the run cannot score; a user left with nothing gets no rows
        kept, skipped_ids, no_history = [], 0, []
        for user, items, lineno in users:
            known, _ = rec.known(items)
            skipped_ids += len(items) - len(known)
            if known:
                kept.append((user, known, lineno))
            else:
                no_history.append((user, lineno))
        if skipped_ids:
            print(f"note: skipped {skipped_ids} history entr{'y' if skipped_ids == 1 else 'ies'} with an unknown "
                  "item id" + (TAB_HINT if spaced else ""), file=sys.stderr)
        if no_history:
            first = ", ".join(f"{u!r} (line {n})" for u, n in no_history[:5]) + (" …" * (len(no_history) > 5))
            print(f"note: {len(no_history)} user(s) have no known item left and no rows in {args.out}: {first}",
                  file=sys.stderr)
        users = kept
    for user, items, lineno in users:  # name file, line and user before scoring anything
        try:
            rec.rows(items, f"{args.users}:{lineno} (user {user!r})")
        except UnknownItemError as e:
            if spaced:  # "prod 3" read as 'prod', '3': the run's ids hold spaces
                raise UnknownItemError(f"{e}{TAB_HINT}", e.unknown) from None
            raise
    empty: list[tuple[str, int]] = []

    def write(tmp: Path) -> None:  # a chunk of users at a time: memory does not grow with users × k
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["user", "rank", "item_id", "score", "title"])
            for start in range(0, len(users), USERS_PER_CHUNK):
                chunk = users[start:start + USERS_PER_CHUNK]
                results = rec.recommend_many([h for _, h, _ in chunk], k=args.k, exclude_history=exclude)
                for (user, _, lineno), items in zip(chunk, results):
                    writer.writerows([user, n, r.item_id, f"{r.score:.6g}", r.title] for n, r in enumerate(items, 1))
                    if not items:
                        empty.append((user, lineno))

    atomic_write(args.out, write)
    print(f"recommendations for {len(users) - len(empty)} users written to {args.out}")
    if empty:
        first = ", ".join(f"{u!r} (line {n})" for u, n in empty[:5]) + (" …" if len(empty) > 5 else "")
        print(f"note: {len(empty)} user(s) have no recommendation: their history covers all "
              f"{rec.num_candidates} candidate items ({first}); they have no rows in {args.out}", file=sys.stderr)
    return 0


def cmd_embed_items(args: Any) -> int:
    from crossan.coldstart import EXTRA_DIR, embed_items, read_extra_items
    from crossan.errors import ServeError

    try:  # the ids stored before, to tell the items this call replaces from those it adds
        stored = set(read_extra_items(args.run_dir).ids)
    except ServeError:  # damaged stored items: embed_items refuses them below, with its advice
        stored = set()
    with run_warnings():
        ids = embed_items(args.run_dir, args.data, device=args.device, data_path=args.run_data)
    total = len(read_extra_items(args.run_dir))
    replaced = sum(i in stored for i in ids)
    what = f"{len(ids) - replaced} new item{'s' * (len(ids) - replaced != 1)}"
    if replaced:
        what += f" and {replaced} replacing stored item{'s' * (replaced != 1)} of the same id"
    print(f"embedded {what} into {Path(args.run_dir) / EXTRA_DIR} ({total} extra items in all)")
    return 0


def cmd_export(args: Any) -> int:
    from crossan.export import export_run

    with run_warnings():
        out = export_run(args.run_dir, args.out, device=args.device, data_path=args.run_data,
                         include_extra=not args.no_extra, force=args.force)
    print(f"exported to {out}")
    return 0


def register(sub: Any) -> None:
    """Add ``recommend``, ``embed-items`` and ``export`` to the ``crossan`` command's subparsers."""
    from crossan.cli import plugin_arg  # the command line's own module, loaded by now

    def common(p: Any) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR",
                       help="a run folder (config.yaml, best.safetensors; results.json once finished)")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, …")
        p.add_argument("--run-data", metavar="PATH",
                       help="the run's training dataset, when it moved since training (default: data.path of "
                            "its config.yaml)")
        plugin_arg(p)

    p = sub.add_parser("recommend", help="top-K items for a history, or for every user of a file",
                       description="Score every item for a history (item ids, oldest first) with a trained run; "
                                   "the user vector reads the last data.max_seq_len items, exactly as in "
                                   "evaluation. History items are excluded when the run was evaluated with "
                                   "eval.mask_history=true (the default; every item of the given history, "
                                   "not only the evaluator's window), kept otherwise; --include-history / "
                                   "--exclude-history decide instead. An unfinished run (no results.json) is "
                                   "served with a warning. --users scores a file of histories in "
                                   "batches and writes a CSV (user, rank, item_id, score, title). A --history "
                                   "that covers every candidate item leaves nothing to recommend: that is said "
                                   "on stderr and the exit status is 1 (with --users such users get no rows, "
                                   "a note names them, and the status stays 0).")
    common(p)
    p.add_argument("--history", nargs="+", metavar="ITEM", help="the history's item ids, oldest first")
    p.add_argument("--users", metavar="FILE", help="TSV of 'user TAB item item …' lines (the users.tsv layout; "
                                                   "'user TAB item TAB item …' for a run whose item ids hold "
                                                   "spaces)")
    p.add_argument("--out", metavar="FILE", help="CSV to write with --users (written atomically)")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--unknown-items", choices=("error", "skip"), default="error",
                   help="an item id the run cannot score (never in the catalogue, or dropped by the data "
                        "protocol because it appears only before every user's kept window): error (default: "
                        "name it and write nothing) or skip (leave it out of the history, with a note)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--include-history", dest="exclude_history", action="store_false", default=None,
                      help="let history items be recommended again (default: the run's eval.mask_history)")
    mask.add_argument("--exclude-history", dest="exclude_history", action="store_true", default=None,
                      help="never recommend an item of the history (default: the run's eval.mask_history)")
    p.set_defaults(fn=cmd_recommend)

    p = sub.add_parser("embed-items", help="add new (cold-start) items to a trained run's candidates",
                       description="Read a catalogue of new items (items.tsv with optional image/video/audio "
                                   "path columns, relative to its folder), run the run's frozen encoders and "
                                   "trained item tower over them, and store them in RUN_DIR/extra_items/; "
                                   "recommend and export then include them. Repeated calls add or replace "
                                   "items by id. ID-only runs cannot embed new items.")
    common(p)
    p.add_argument("--data", required=True, metavar="NEW_CATALOGUE",
                   help="folder holding items.tsv (and its media), or the items.tsv file")
    p.set_defaults(fn=cmd_embed_items)

    p = sub.add_parser("export", help="write item embeddings, weights and a description for serving",
                       description="Write item_embeddings.npy / .safetensors with item_ids.json, "
                                   "model.safetensors (user encoder + item tower) and export.json into DIR, "
                                   "loadable without crossan (see docs/serving.md). Written to a temporary "
                                   "folder and renamed into place. Only a finished run (with results.json) "
                                   "is exported.")
    common(p)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.add_argument("--no-extra", action="store_true", help="leave out the run's extra (cold-start) items")
    p.set_defaults(fn=cmd_export)
