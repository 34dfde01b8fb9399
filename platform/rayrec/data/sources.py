"""Raw logs of every supported format, read as rayrec's canonical raw tables.

Owns *where* the input files are (``event_files``, ``catalog_files``), a cheap pre-flight check of
one file (``check_file``), and streaming one file as tables of exactly ``schema.RAW_EVENT_SCHEMA`` /
``RAW_CATALOG_SCHEMA`` (``read_event_file``, ``read_catalog_file``). Plain pyarrow, no Ray: the
preprocessing stage runs one Ray task per file, and a reader holds one chunk (plus one parse block)
in memory, never the whole file.

* Values stay the strings the log wrote; judging them is the validator's job. The only conversions
  are the format mappings documented on each reader. An empty field and an unmapped column are both
  null: one spelling of "no value".
* No row is dropped: a line that cannot be split into fields becomes a row whose canonical columns
  are null and whose ``reason`` says why. ``source_row`` counts data rows from 1.
* Any other read problem (truncated or corrupt file, undecodable bytes, missing columns) raises
  ``SourceFileError`` naming the file, so the caller can apply ``source.on_bad_file``.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import json
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rayrec.config import SourceConfig
from rayrec.schema import RAW_CATALOG_COLUMNS, RAW_CATALOG_SCHEMA, RAW_EVENT_COLUMNS, RAW_EVENT_SCHEMA
from rayrec.schema import REASON, SOURCE_FILE, SOURCE_ROW

Column = pa.Array | pa.ChunkedArray
_ROW, _BAD = "__row", "__bad"  # reader-internal columns: data-row number, malformed-line reason
_ADVICE = "repair or re-export the file, or set source.on_bad_file: skip to leave it out of the run"
_PATTERNS = {"csv": ("*.csv", "*.csv.gz"), "parquet": ("*.parquet", "*.pq"), "jsonl": ("*.jsonl", "*.json")}
_MOVIELENS = (("u.data", "u.item"), ("ratings.dat", "movies.dat"), ("ratings.csv", "movies.csv"))
_ML_HEADERS = {
    "ratings.csv": ["userId", "movieId", "rating", "timestamp"],
    "movies.csv": ["movieId", "title", "genres"],
}
_ML_DELIMITERS = {"u.data": "\t", "u.item": "|", "ratings.dat": "\x1f", "movies.dat": "\x1f"}  # \x1f: "::"
_RETAILROCKET_EVENTS = {"addtocart": "add_to_cart", "transaction": "purchase"}  # "view" stays "view"
_CANCELLED = "cancelled invoice (InvoiceNo starts with 'C'): a return, not an interaction"
# The copy in shared/datasets writes 2010-12-01 08:26:00; UCI's own CSV export writes 12/1/2010 8:26.
_RETAIL_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}  # what pyarrow detects by name
_BLOCK_BYTES = 1 << 22  # CSV parse block; chunks are re-cut to chunk_rows afterwards


class SourceFileError(RuntimeError):
    """An input file that cannot be read; the message names it, says what is wrong and what to do."""

    def __init__(self, path: str, problem: str, advice: str = _ADVICE) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}; {advice}")


def _expand(spec: str, patterns: Iterable[str], what: str = "source.events") -> list[str]:
    """A file, a directory (searched recursively) or a glob -> sorted absolute file paths."""
    if os.path.isdir(spec):
        found = {p for pat in patterns for p in glob.glob(os.path.join(spec, "**", pat), recursive=True)}
    else:
        found = {spec} if os.path.isfile(spec) else set(glob.glob(spec, recursive=True))
    # Spark/Hadoop writers leave _SUCCESS and .crc files beside the data.
    keep = [p for p in found if os.path.isfile(p) and not os.path.basename(p).startswith((".", "_"))]
    if not keep:
        raise SourceFileError(spec, f"no input files found (looked for {', '.join(patterns)})", f"check {what}")
    return sorted(os.path.abspath(p) for p in keep)


def _movielens_files(cfg: SourceConfig) -> tuple[str, str]:
    """(ratings, movies) of a MovieLens folder; the variant is told by which files are present."""
    folder = os.path.abspath(cfg.events if os.path.isdir(cfg.events) else os.path.dirname(cfg.events))
    for ratings, movies in _MOVIELENS:
        if os.path.isfile(os.path.join(folder, ratings)):
            return os.path.join(folder, ratings), os.path.join(folder, movies)
    problem = "not a MovieLens folder: no u.data (100k), ratings.dat (1m/10m) or ratings.csv (latest)"
    raise SourceFileError(folder, problem, "point source.events at the unpacked dataset folder")


def event_files(cfg: SourceConfig) -> list[str]:
    """Sorted absolute paths of the event files to read; SourceFileError if there are none."""
    if cfg.format == "movielens":
        return [_movielens_files(cfg)[0]]
    if cfg.format == "retailrocket":
        spec = os.path.join(cfg.events, "events.csv") if os.path.isdir(cfg.events) else cfg.events
        return _expand(spec, ("events.csv",))
    if cfg.format == "generic":
        _generic_mapping(cfg, "events")  # a config mistake fails here, before any task starts
    return _expand(cfg.events, _PATTERNS[cfg.file_format if cfg.format == "generic" else "csv"])


def catalog_files(cfg: SourceConfig) -> list[str]:
    """Catalog files to read; [] when the format has none (items then come from the log).

    MovieLens takes its movie list from the dataset folder (``source.catalog`` is not used); Online
    Retail derives its catalog from the event file itself unless ``source.catalog`` names another.
    """
    if cfg.format == "movielens":
        return [_movielens_files(cfg)[1]]
    if cfg.format == "retailrocket":
        return []
    if cfg.catalog is None:
        return event_files(cfg) if cfg.format == "online_retail" else []
    patterns = _PATTERNS[cfg.file_format if cfg.format == "generic" else "csv"]
    return _expand(cfg.catalog, patterns, "source.catalog")


def _open(path: str) -> pa.NativeFile:
    return pa.input_stream(path, compression="detect")  # .gz/.bz2/.zst by extension


def _text_encoding(path: str) -> str:
    """UTF-8, except MovieLens 100k/1m movie lists, which are ISO-8859-1 ("Misérables" as 0xE9)."""
    if os.path.basename(path) in ("u.item", "movies.dat"):
        with _open(path) as f:  # movie lists are small (< 1 MB): sniff the whole file
            try:
                f.read().decode("utf-8")
            except UnicodeDecodeError:
                return "latin-1"
    return "utf-8"


def check_file(path: str) -> str | None:
    """Cheap pre-flight: None if the file looks readable, else why not.

    A reason starting with "empty file" means zero rows, not corruption. Parquet: the footer is read.
    Text: the first line must decompress and decode. Damage later in a text file is only found by
    reading it, and then ``read_event_file`` raises SourceFileError.
    """
    if not os.path.isfile(path):
        return "not a regular file" if os.path.exists(path) else "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:  # Parquet by name or by magic bytes (a truncated file keeps its head)
        parquet = path.endswith((".parquet", ".pq")) or f.read(4) == b"PAR1"
    try:
        if parquet:
            pq.read_metadata(path)
            return None
        with _open(path) as f:
            head = f.read(1 << 16)
    except (pa.ArrowException, OSError) as e:
        codec = _CODECS.get(os.path.splitext(path)[1], "input")
        kind = "truncated or corrupt Parquet file" if parquet else f"not valid {codec}"
        return f"{kind}: {e}"
    if not head:
        return "empty file (0 bytes after decompression)"
    first, newline, _ = head.partition(b"\n")
    encoding = _text_encoding(path)
    try:  # without a newline the 64 KiB cut may split a character: only a complete line must decode
        codecs.getincrementaldecoder(encoding)().decode(first, final=bool(newline))
    except UnicodeDecodeError as e:
        return f"first line is not valid {encoding}: {e}"
    return None


def _as_string(values: Column) -> Column:
    """Any column as strings; timestamps as ISO-8601 UTC with 'Z' (a naive timestamp means UTC)."""
    t = values.type
    if pa.types.is_dictionary(t):
        return _as_string(pc.cast(values, t.value_type))
    if pa.types.is_timestamp(t):
        utc = pc.cast(values, pa.timestamp(t.unit, "UTC")) if t.tz else values
        return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ")
    return values if t == pa.string() else pc.cast(values, pa.string())


def _canonical(
    chunk: pa.Table, values: Mapping[str, Column | str], schema: pa.Schema, path: str, reason: Column | None = None
) -> pa.Table:
    """The one place a reader's chunk becomes a canonical raw table (shared by every format).

    ``values`` maps canonical column -> column or constant string; missing ones are null. A row the
    reader flagged as malformed (``__bad``) gets null values and that reason; otherwise ``reason``.
    """
    bad = chunk.column(_BAD)
    malformed, null = pc.is_valid(bad), pa.scalar(None, pa.string())
    columns: dict[str, Column] = {}
    for name in schema.names[:-3]:  # the last three are provenance: source_file, source_row, reason
        value = values.get(name)
        if value is None:
            columns[name] = pa.nulls(chunk.num_rows, pa.string())
            continue
        value = pa.scalar(value, pa.string()) if isinstance(value, str) else _as_string(value)
        columns[name] = pc.if_else(pc.or_kleene(malformed, pc.equal(value, "")), null, value)
    columns[SOURCE_FILE] = pa.repeat(pa.scalar(path, pa.string()), chunk.num_rows)
    columns[SOURCE_ROW] = chunk.column(_ROW)
    columns[REASON] = bad if reason is None else pc.coalesce(bad, reason)
    return pa.table(columns, schema=schema)


def _rebatch(tables: Iterable[pa.Table], chunk_rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly chunk_rows rows (the last may be shorter)."""
    buffered: list[pa.Table] = []
    size = 0
    for table in tables:
        buffered.append(table)
        size += table.num_rows
        while size >= chunk_rows:
            whole = pa.concat_tables(buffered)
            yield whole.slice(0, chunk_rows)
            buffered, size = [whole.slice(chunk_rows)], size - chunk_rows
    if size:
        yield pa.concat_tables(buffered)


def _numbered(table: pa.Table, rows: np.ndarray, bad: list[str | None] | None = None) -> pa.Table:
    """Attach the reader-internal row numbers and malformed-line reasons to a chunk of file columns."""
    table = table.append_column(_ROW, pa.array(rows, pa.int64()))
    return table.append_column(_BAD, pa.array(bad, pa.string()) if bad else pa.nulls(len(rows), pa.string()))


def _require(path: str, found: Iterable[str], needed: Iterable[str], hint: str) -> None:
    found = list(found)
    missing = [c for c in dict.fromkeys(needed) if c not in found]
    if missing:
        raise SourceFileError(path, f"missing column(s) {missing} (found {found})", hint)


class _DoubleColonReader(io.RawIOBase):
    """A ``::``-separated file seen as ``\\x1f``-separated: pyarrow needs a one-byte delimiter."""

    def __init__(self, raw: pa.NativeFile) -> None:
        self._raw, self._carry, self._out, self._eof = raw, b"", b"", False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # never more than size bytes: pyarrow copies into a buffer
        while not self._eof and (size < 0 or len(self._out) < size):
            block = self._raw.read(1 << 20)
            self._eof = not block
            data = (self._carry + block).replace(b"::", b"\x1f")  # unit separator: absent from the text
            # a lone trailing ':' may pair with the first byte of the next block
            data, self._carry = (data[:-1], b":") if data.endswith(b":") and block else (data, b"")
            self._out += data
        size = len(self._out) if size < 0 else size
        out, self._out = self._out[:size], self._out[size:]
        return out


def _csv_chunks(
    path: str, columns: list[str], chunk_rows: int, hint: str = "check the file's format", *,
    names: list[str] | None = None, delimiter: str = ",", encoding: str = "utf-8",
) -> Iterator[pa.Table]:
    """Stream ``columns`` of a CSV as strings plus __row/__bad, in tables of chunk_rows rows.

    The first line is a header that must hold ``columns``, unless ``names`` names the fields of a
    headerless file (then quoting is off: MovieLens titles hold unquoted '"'). A line with the wrong
    number of fields becomes a row with null values and a reason.
    """
    if names is None:
        with _open(path) as f:
            first = f.read(1 << 20).partition(b"\n")[0].rstrip(b"\r")
        _require(path, next(csv.reader([first.decode("utf-8-sig")]), []), columns, hint)
    bad: dict[int, str] = {}

    def on_invalid(row: pacsv.InvalidRow) -> str:  # row.number counts physical rows, header included
        got = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        bad[row.number - (0 if names else 1)] = f"malformed line: {got}: {row.text[:200]}"
        return "skip"

    quoted = names is None
    reader = pacsv.open_csv(
        _DoubleColonReader(_open(path)) if delimiter == "\x1f" else _open(path),
        # single-threaded: with threads, pyarrow does not tell malformed lines' row numbers
        read_options=pacsv.ReadOptions(
            use_threads=False, block_size=_BLOCK_BYTES, encoding=encoding, column_names=names
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                                         newlines_in_values=quoted, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns, column_types=dict.fromkeys(columns, pa.string())
        ),
    )

    def malformed(lines: dict[int, str]) -> pa.Table:
        nulls = {c: pa.nulls(len(lines), pa.string()) for c in columns}
        return _numbered(pa.table(nulls), np.array(list(lines), np.int64), list(lines.values()))

    def numbered() -> Iterator[pa.Table]:
        skips: list[int] = []  # malformed rows at or after next_row: later parsed rows step over them
        pending: dict[int, str] = {}  # malformed rows not yet handed on
        next_row = 1
        for batch in reader:
            # pyarrow reports malformed lines as it parses, which runs a block ahead of the batch it
            # hands out; the i-th parsed row is the i-th row number from next_row not among them.
            skips, pending = sorted({*skips, *bad}), pending | bad
            bad.clear()
            span = np.arange(next_row, next_row + batch.num_rows + len(skips), dtype=np.int64)
            rows = np.setdiff1d(span, skips, assume_unique=True)[: batch.num_rows]
            next_row = int(rows[-1]) + 1 if len(rows) else next_row
            skips = [s for s in skips if s >= next_row]
            # hand on the malformed rows this batch has passed, so rows stay in file order (or all
            # of them once 100k pile up, as in a file of nothing but malformed lines)
            due = {k: v for k, v in pending.items() if k < next_row or len(pending) >= 100_000}
            pending = {k: v for k, v in pending.items() if k not in due}
            good = _numbered(pa.Table.from_batches([batch]), rows)
            yield pa.concat_tables([good, malformed(due)]).sort_by(_ROW) if due else good
        if pending or bad:  # malformed lines after the last parsed row
            yield malformed(dict(sorted((pending | bad).items())))

    yield from _rebatch(numbered(), chunk_rows)


def _json_record(line: str) -> tuple[dict, str | None]:
    try:
        record = json.loads(line)
        problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e})"
    return ({}, f"malformed line: {problem}: {line.strip()[:200]}") if problem else (record, None)


def _json_text(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _jsonl_chunks(path: str, columns: list[str], chunk_rows: int, hint: str) -> Iterator[pa.Table]:
    """JSON Lines, parsed line by line; a non-string value is kept as its JSON text ("2.5", "true").

    With no header to check, a mapped column must be a key of some record in the first chunk.
    """

    def table(batch: list[tuple[dict, str | None]], last_row: int, first_chunk: bool) -> pa.Table:
        keys = {k for record, _ in batch for k in record} if first_chunk else set()
        if keys:  # (a chunk of nothing but malformed lines has no keys to judge by)
            _require(path, keys, columns, hint)
        values = {c: pa.array([_json_text(record.get(c)) for record, _ in batch], pa.string()) for c in columns}
        rows = np.arange(last_row - len(batch) + 1, last_row + 1)
        return _numbered(pa.table(values), rows, [reason for _, reason in batch])

    batch: list[tuple[dict, str | None]] = []
    number = 0
    with io.TextIOWrapper(_open(path), encoding="utf-8") as lines:
        for number, line in enumerate((line for line in lines if line.strip()), 1):
            batch.append(_json_record(line))
            if len(batch) == chunk_rows:
                yield table(batch, number, number == chunk_rows)
                batch = []
    if batch:
        yield table(batch, number, number <= chunk_rows)


def _parquet_chunks(path: str, columns: list[str], chunk_rows: int, hint: str) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path)
    _require(path, parquet.schema_arrow.names, columns, hint)
    start = 1
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        yield _numbered(pa.Table.from_batches([batch]), np.arange(start, start + batch.num_rows))
        start += batch.num_rows


def _rayrec(path: str, chunk_rows: int, columns: tuple[str, ...], schema: pa.Schema) -> Iterator[pa.Table]:
    """The generator's CSVs already use the canonical column names."""
    hint = "a rayrec-format file needs the header " + ",".join(columns)
    for chunk in _csv_chunks(path, list(columns), chunk_rows, hint):
        yield _canonical(chunk, {c: chunk[c] for c in columns}, schema, path)


def _movielens_chunks(path: str, chunk_rows: int, names: list[str]) -> Iterator[pa.Table]:
    """A MovieLens file with its columns named ``names`` (in file order), whatever the variant."""
    base = os.path.basename(path)
    if base in _ML_HEADERS:  # ml-latest: real CSV with a header and quoted titles
        for chunk in _csv_chunks(path, _ML_HEADERS[base], chunk_rows, "expected the MovieLens header"):
            yield chunk.rename_columns([*names, _ROW, _BAD])
    elif base in _ML_DELIMITERS:
        encoding, delimiter = _text_encoding(path), _ML_DELIMITERS[base]
        yield from _csv_chunks(path, names, chunk_rows, names=names, delimiter=delimiter, encoding=encoding)
    else:
        raise SourceFileError(path, "not a MovieLens file (u.data, u.item, ratings/movies .dat or .csv)")


def _movielens_events(path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """Every rating is an implicit interaction: event_type "click", whatever the score.

    timestamp is the unix-seconds string as written; price, quantity, session and query are null.
    """
    for chunk in _movielens_chunks(path, chunk_rows, ["user", "item", "rating", "ts"]):
        values = {"user_id": chunk["user"], "item_id": chunk["item"],
                  "timestamp": chunk["ts"], "event_type": "click"}
        yield _canonical(chunk, values, RAW_EVENT_SCHEMA, path)


def _movie_category(first_genre: Column | pa.Scalar) -> Column:
    genre = pc.fill_null(first_genre, "")
    genre = pc.if_else(pc.is_in(genre, pa.array(["", "(no genres listed)"])), "unknown", genre)
    return pc.binary_join_element_wise("Movies", genre, " > ")


def _movielens_catalog(path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """Movies: item_id = movie id, category "Movies > <first genre>", no brand or price."""
    if os.path.basename(path) != "u.item":  # movies.dat / movies.csv: genres as "A|B"
        for chunk in _movielens_chunks(path, chunk_rows, ["id", "title", "genres"]):
            first = pc.list_element(pc.split_pattern(chunk["genres"], "|", max_splits=1), 0)
            values = {"item_id": chunk["id"], "title": chunk["title"], "category": _movie_category(first)}
            yield _canonical(chunk, values, RAW_CATALOG_SCHEMA, path)
        return
    # ml-100k: one 0/1 column per genre, in the order of u.genre's "name|index" lines
    genre_file = os.path.join(os.path.dirname(path), "u.genre")
    if not os.path.isfile(genre_file):
        raise SourceFileError(path, "u.genre (the genre names) is missing beside u.item", "restore the dataset")
    with open(genre_file, encoding="latin-1") as f:
        pairs = sorted((ln.strip().rsplit("|", 1) for ln in f if ln.strip()), key=lambda p: int(p[1]))
    flags = {f"genre_{i}": name for i, (name, _) in enumerate(pairs)}
    for chunk in _movielens_chunks(path, chunk_rows, ["id", "title", "released", "video", "url", *flags]):
        first: Column | pa.Scalar = pa.scalar(None, pa.string())
        for flag, genre in reversed(flags.items()):
            first = pc.if_else(pc.fill_null(pc.equal(chunk[flag], "1"), False), genre, first)
        values = {"item_id": chunk["id"], "title": chunk["title"], "category": _movie_category(first)}
        yield _canonical(chunk, values, RAW_CATALOG_SCHEMA, path)


def _retailrocket_events(path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """view/addtocart/transaction -> view/add_to_cart/purchase; other event names pass through for
    the validator to reject. timestamp is unix milliseconds as written; session_id = transactionid."""
    columns = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
    for chunk in _csv_chunks(path, columns, chunk_rows, "expected RetailRocket's events.csv"):
        event = chunk["event"]
        for raw, canonical in _RETAILROCKET_EVENTS.items():
            event = pc.if_else(pc.equal(event, raw), canonical, event)
        values = {"user_id": chunk["visitorid"], "item_id": chunk["itemid"], "event_type": event}
        values |= {"timestamp": chunk["timestamp"], "session_id": chunk["transactionid"]}
        yield _canonical(chunk, values, RAW_EVENT_SCHEMA, path)


def _retail_time(raw: Column) -> Column:
    """Invoice dates as ``YYYY-MM-DDTHH:MM:SSZ``; unparsable values unchanged for the validator.

    'Z' is a convention: the shop's clock is UK local time (BST in summer), which the log does not say.
    """
    parsed = pc.coalesce(*(pc.strptime(raw, f, unit="s", error_is_null=True) for f in _RETAIL_TIME_FORMATS))
    return pc.if_else(pc.is_null(parsed), raw, pc.strftime(parsed, format="%Y-%m-%dT%H:%M:%SZ"))


def _online_retail_events(path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """Each invoice line is a purchase of StockCode by CustomerID; the invoice is the session.

    CustomerID ``17850.0`` becomes ``17850`` (blank stays null: the validator rejects it). Lines of
    cancelled invoices keep their values and get a preset reason.
    """
    columns = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
    for chunk in _csv_chunks(path, columns, chunk_rows, "expected the UCI Online Retail header"):
        invoice = chunk["InvoiceNo"]
        user = pc.replace_substring_regex(chunk["CustomerID"], r"\.0$", "")
        values = {"user_id": user, "item_id": chunk["StockCode"], "event_type": "purchase", "session_id": invoice}
        values |= {"timestamp": _retail_time(chunk["InvoiceDate"]), "price": chunk["UnitPrice"]}
        values |= {"quantity": chunk["Quantity"]}
        cancelled = pc.if_else(pc.starts_with(invoice, "C"), _CANCELLED, pa.scalar(None, pa.string()))
        yield _canonical(chunk, values, RAW_EVENT_SCHEMA, path, reason=cancelled)


def _groups(chunk: pa.Table, keys: list[str], how: str) -> Iterator[tuple]:
    """(*key values, aggregate of __row) per group of a chunk."""
    grouped = chunk.group_by(keys).aggregate([(_ROW, how)])
    return zip(*(grouped[c].to_pylist() for c in [*keys, f"{_ROW}_{how}"]))


def _online_retail_catalog(path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """One row per StockCode, derived from the invoice lines in one streaming pass.

    title: its most frequent non-empty Description (ties: alphabetically first); price: median of its
    positive UnitPrice values, 2 decimals; source_row: its first line. Only per-code counts are kept.
    """
    first: dict[str, int] = {}
    titles: defaultdict[str, Counter[str]] = defaultdict(Counter)
    prices: defaultdict[str, Counter[float]] = defaultdict(Counter)
    columns = ["StockCode", "Description", "UnitPrice"]
    for chunk in _csv_chunks(path, columns, chunk_rows, "expected the UCI Online Retail header"):
        chunk = chunk.filter(pc.and_(pc.is_null(chunk[_BAD]), pc.not_equal(chunk["StockCode"], "")))
        for code, row in _groups(chunk, ["StockCode"], "min"):
            first.setdefault(code, row)
        for code, title, n in _groups(chunk, ["StockCode", "Description"], "count"):
            titles[code].update({title: n} if title else {})
        for code, price, n in _groups(chunk, ["StockCode", "UnitPrice"], "count"):
            try:
                prices[code].update({float(price): n} if 0 < float(price) < float("inf") else {})
            except ValueError:  # not a number: no evidence about the price
                pass
    codes = sorted(first, key=first.__getitem__)
    best = {c: min(titles[c].items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in codes if titles[c]}
    medians = {c: f"{statistics.median(prices[c].elements()):.2f}" for c in codes if prices[c]}
    table = pa.table([codes, [best.get(c) for c in codes], [medians.get(c) for c in codes]],
                     schema=pa.schema([(c, pa.string()) for c in ("item_id", "title", "price")]))
    table = _numbered(table, np.array([first[c] for c in codes], np.int64))
    for part in _rebatch([table], chunk_rows):
        yield _canonical(part, {c: part[c] for c in ("item_id", "title", "price")}, RAW_CATALOG_SCHEMA, path)


def _generic_mapping(cfg: SourceConfig, kind: str) -> dict[str, str]:
    """canonical column -> file column of a 'generic' log; a config mistake is a ValueError."""
    events = kind == "events"
    mapping, key = (cfg.columns, "source.columns") if events else (cfg.catalog_columns, "source.catalog_columns")
    canonical = RAW_EVENT_COLUMNS if events else RAW_CATALOG_COLUMNS
    if unknown := sorted(set(mapping) - set(canonical)):
        raise ValueError(f"{key}: unknown canonical column(s) {unknown}; expected some of {list(canonical)}")
    if not mapping:
        raise ValueError(f"{key} is empty: map canonical columns to the file's (e.g. item_id: sku)")
    if events and "event_type" not in mapping and not cfg.default_event_type:
        raise ValueError("a generic log needs source.columns.event_type (its event-type column) or "
                         "source.default_event_type (one type for every row, e.g. 'purchase')")
    return dict(mapping)


def _generic(path: str, cfg: SourceConfig, chunk_rows: int, kind: str) -> Iterator[pa.Table]:
    """Renames mapped columns; every value becomes its string form (timestamps ISO-8601 with 'Z')."""
    mapping = _generic_mapping(cfg, kind)
    columns = list(dict.fromkeys(mapping.values()))
    hint = f"check {'source.columns' if kind == 'events' else 'source.catalog_columns'} against the file"
    if cfg.file_format == "parquet":
        chunks = _rebatch(_parquet_chunks(path, columns, chunk_rows, hint), chunk_rows)
    elif cfg.file_format == "jsonl":
        chunks = _jsonl_chunks(path, columns, chunk_rows, hint)
    else:
        chunks = _csv_chunks(path, columns, chunk_rows, hint)
    for chunk in chunks:
        values: dict[str, Column | str] = {canon: chunk[col] for canon, col in mapping.items()}
        if kind == "events" and "event_type" not in mapping:
            values["event_type"] = str(cfg.default_event_type)
        yield _canonical(chunk, values, RAW_EVENT_SCHEMA if kind == "events" else RAW_CATALOG_SCHEMA, path)


_Reader = Callable[[str, SourceConfig, int], Iterator[pa.Table]]
_EVENT_READERS: dict[str, _Reader] = {
    "rayrec": lambda p, cfg, n: _rayrec(p, n, RAW_EVENT_COLUMNS, RAW_EVENT_SCHEMA),
    "movielens": _movielens_events,
    "retailrocket": _retailrocket_events,
    "online_retail": _online_retail_events,
    "generic": lambda p, cfg, n: _generic(p, cfg, n, "events"),
}
_CATALOG_READERS: dict[str, _Reader] = {
    "rayrec": lambda p, cfg, n: _rayrec(p, n, RAW_CATALOG_COLUMNS, RAW_CATALOG_SCHEMA),
    "movielens": _movielens_catalog,
    "online_retail": _online_retail_catalog,
    "generic": lambda p, cfg, n: _generic(p, cfg, n, "catalog"),
}


def _guarded(reader: _Reader, path: str, cfg: SourceConfig, chunk_rows: int) -> Iterator[pa.Table]:
    """Run a reader; any read error becomes a SourceFileError naming the file."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return  # an empty file is zero rows, not an error (check_file reports it)
    try:
        yield from reader(path, cfg, chunk_rows)
    except (pa.ArrowException, OSError, UnicodeDecodeError, EOFError) as e:
        raise SourceFileError(path, f"cannot be read ({type(e).__name__}: {e})") from e


def read_event_file(path: str, cfg: SourceConfig, chunk_rows: int = 100_000) -> Iterator[pa.Table]:
    """Stream one event file of ``cfg.format`` as RAW_EVENT_SCHEMA tables of at most chunk_rows rows.

    Yields nothing for an empty file; raises SourceFileError (naming the file) if it cannot be read.
    """
    return _guarded(_EVENT_READERS[cfg.format], path, cfg, chunk_rows)


def read_catalog_file(path: str, cfg: SourceConfig) -> Iterator[pa.Table]:
    """Stream one catalog file (see ``catalog_files``) as RAW_CATALOG_SCHEMA tables."""
    if cfg.format not in _CATALOG_READERS:
        raise ValueError(f"source.format {cfg.format!r} has no catalog file (catalog_files returns [])")
    return _guarded(_CATALOG_READERS[cfg.format], path, cfg, 100_000)
