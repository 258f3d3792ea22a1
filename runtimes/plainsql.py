"""Plain SQL for the report path: statements built from the models' own names, values always as
parameters, rows read back as the ORM would give them (the backend's and fields' converters).

A report batch and its notification step run a handful of simple statements many times a second.
Through the ORM each one is a QuerySet built, compiled and turned back into rows on every call:
that compiling was about half of a report batch's CPU. Here a read's SQL is built once per shape
and count of keys (`Read`, `read`, `instances`), and the writes (`update`, `write_rows`,
`insert_rows`) are one parametrized UPDATE or multi-row INSERT. Everything else keeps using the ORM.
"""

from dataclasses import dataclass
from functools import lru_cache

from django.db import connection
from django.db.models import ForeignKey
from django.db.models.expressions import Col

# The most keys one statement's IN list names; more take several statements.
IN_KEYS = 500
# The most rows one INSERT carries (bulk_create's batch size here before).
INSERT_ROWS = 500


@dataclass(frozen=True)
class Read:
    """A SELECT of `fields` of `model` rows whose `key` is one of a list of values, ordered by
    primary key. A field is a name (or attname, or "pk") of the model, or "fk__name": a field of
    the row a foreign key points to. `exclude`: (field, value) pairs the rows must differ from.
    `lock` (by primary key only): the rows are locked for this transaction (FOR UPDATE OF the
    model's table) where the database locks rows; in primary-key order, chunk after chunk, so two
    lockers never wait on each other in turn."""

    model: type
    fields: tuple
    key: str = "pk"
    exclude: tuple = ()
    lock: bool = False


def _column(model, name, quote):
    """(the column's SQL, its expression for converters, the join it needs or None)."""
    opts = model._meta
    if "__" not in name:
        field = opts.pk if name == "pk" else opts.get_field(name)
        return f"{quote(opts.db_table)}.{quote(field.column)}", Col(opts.db_table, field), None
    via, _, name = name.partition("__")
    relation = opts.get_field(via)
    if not isinstance(relation, ForeignKey) or "__" in name:
        raise ValueError(f"{via}__{name}: only a field across one foreign key can be read")
    related = relation.related_model._meta
    field = related.pk if name == "pk" else related.get_field(name)
    alias = quote(f"{via}_{related.db_table}")
    kind = "LEFT OUTER JOIN" if relation.null else "INNER JOIN"
    on = f"{quote(opts.db_table)}.{quote(relation.column)} = {alias}.{quote(relation.target_field.column)}"
    join = f"{kind} {quote(related.db_table)} {alias} ON {on}"
    return f"{alias}.{quote(field.column)}", Col(alias, field), join


@lru_cache(maxsize=1024)
def _statement(spec, count, vendor):
    """The SQL of `spec` for `count` keys, and the parameters that follow the keys."""
    quote = connection.ops.quote_name
    opts = spec.model._meta
    table = quote(opts.db_table)
    columns, joins = [], []
    for name in spec.fields:
        column, _, join = _column(spec.model, name, quote)
        columns.append(column)
        if join and join not in joins:
            joins.append(join)
    if spec.lock and spec.key != "pk":  # by another key, chunks would not lock in primary-key order
        raise ValueError("only a read by primary key can lock its rows")
    key = opts.pk if spec.key == "pk" else opts.get_field(spec.key)
    where = [f"{table}.{quote(key.column)} IN ({', '.join(['%s'] * count)})"]
    params = []
    for name, value in spec.exclude:
        field = opts.get_field(name)
        if field.null or value is None:  # `<>` would also leave out the NULLs, which .exclude() keeps
            raise ValueError(f"{name}: only a value of a NOT NULL field can be excluded")
        where.append(f"{table}.{quote(field.column)} <> %s")
        params.append(field.get_db_prep_value(value, connection))
    # Names come from the models, values are parameters.
    sql = f"SELECT {', '.join(columns)} FROM {table} {' '.join(joins)} WHERE {' AND '.join(where)}"  # noqa: S608
    sql += f" ORDER BY {table}.{quote(opts.pk.column)}"
    if spec.lock and connection.features.has_select_for_update:
        sql += f" FOR UPDATE OF {table}" if connection.features.has_select_for_update_of else " FOR UPDATE"
    return sql, tuple(params)


def _converters_of(expression):
    """The backend's and the field's converters of a column, as the ORM's compiler applies them."""
    return connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)


@lru_cache(maxsize=256)
def _converted(spec, vendor):
    """(position, expression) of each field of `spec` whose values this kind of database converts.
    Only the expressions are kept: the converters are the current connection's (each thread has its
    own), taken on each read."""
    columns = (_column(spec.model, name, connection.ops.quote_name)[1] for name in spec.fields)
    return tuple((position, expression) for position, expression in enumerate(columns) if _converters_of(expression))


def _chunks(keys):
    """The keys in runs of at most IN_KEYS, for one statement each."""
    return [keys[start : start + IN_KEYS] for start in range(0, len(keys), IN_KEYS)]


def read(spec, keys):
    """The rows of `spec` whose key is one of `keys`: a tuple of the fields' values per row, as
    the ORM gives them, ordered by primary key (one query per IN_KEYS keys)."""
    keys = sorted(set(keys))
    if not keys:
        return []
    chunks = _chunks(keys)
    statements = [_statement(spec, len(chunk), connection.vendor) for chunk in chunks]
    found = []
    with connection.cursor() as cursor:
        for chunk, (sql, params) in zip(chunks, statements, strict=True):
            cursor.execute(sql, [*chunk, *params])
            found += cursor.fetchall()
    converting = [
        (position, _converters_of(expression), expression)
        for position, expression in _converted(spec, connection.vendor)
    ]
    if not converting:
        return found
    converted = []
    for row in found:
        row = list(row)
        for position, converters, expression in converting:
            value = row[position]
            for convert in converters:
                value = convert(value, expression, connection)
            row[position] = value
        converted.append(tuple(row))
    return converted


def instances(model, keys, related=(), lock=False):
    """The `model` rows whose primary key is one of `keys`, every concrete field loaded (as the
    ORM loads them), ordered by primary key, each with the values of `related` fields ("fk__name")
    beside it: a list of (instance, tuple of those values)."""
    names = tuple(field.attname for field in model._meta.concrete_fields)
    rows = read(Read(model, names + tuple(related), lock=lock), keys)
    return [(model.from_db(connection.alias, names, row[: len(names)]), row[len(names) :]) for row in rows]


# --- writes -----------------------------------------------------------------------------------


def _prepared(model, rows, fields):
    """The columns of these fields, and each row's values for them, ready for the database."""
    columns = [model._meta.get_field(name) for name in fields]  # get_field refuses any other name
    values = [[column.get_db_prep_save(getattr(row, column.attname), connection) for column in columns] for row in rows]
    return columns, values


def update(model, keys, changes, where=None, increments=None):
    """UPDATE the `model` rows whose primary key is one of `keys` and whose fields hold the values
    in `where`: set each field of `changes` to its value, add to each field of `increments` its
    number. Returns how many rows changed (one statement per IN_KEYS keys)."""
    quote = connection.ops.quote_name
    opts = model._meta
    sets, set_params, conditions, condition_params = [], [], [], []
    for name, value in changes.items():
        field = opts.get_field(name)  # get_field refuses any other name
        sets.append(f"{quote(field.column)} = %s")
        set_params.append(field.get_db_prep_save(value, connection))
    for name, number in (increments or {}).items():
        column = quote(opts.get_field(name).column)
        sets.append(f"{column} = {column} + %s")
        set_params.append(int(number))
    for name, value in (where or {}).items():
        field = opts.get_field(name)
        conditions.append(f"{quote(field.column)} = %s")
        condition_params.append(field.get_db_prep_value(value, connection))
    changed = 0
    with connection.cursor() as cursor:
        for chunk in _chunks(list(keys)):
            matches = [f"{quote(opts.pk.column)} IN ({', '.join(['%s'] * len(chunk))})", *conditions]
            # Names come from the model, values are parameters.
            sql = f"UPDATE {quote(opts.db_table)} SET {', '.join(sets)} WHERE {' AND '.join(matches)}"  # noqa: S608
            cursor.execute(sql, [*set_params, *chunk, *condition_params])
            changed += cursor.rowcount
    return changed


def write_rows(rows, fields):
    """Save these fields of these model instances (all of one model): one plain UPDATE for one
    row, one parametrized UPDATE executed for every row for more. Not bulk_update: its CASE WHEN
    per row and field is compiled expression by expression, and took most of a batch's time."""
    if not rows:
        return
    model = type(rows[0])
    if len(rows) == 1:
        update(model, [rows[0].pk], {name: getattr(rows[0], name) for name in fields})
        return
    quote = connection.ops.quote_name
    columns, values = _prepared(model, rows, fields)
    assignments = ", ".join(f"{quote(column.column)} = %s" for column in columns)
    # Names come from the model (_prepared), values are parameters.
    sql = f"UPDATE {quote(model._meta.db_table)} SET {assignments} WHERE {quote(model._meta.pk.column)} = %s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.executemany(sql, [row_values + [row.pk] for row_values, row in zip(values, rows, strict=True)])


def insert_rows(model, rows, fields):
    """Insert these rows (their primary keys are not read back): one multi-row INSERT per
    INSERT_ROWS rows, or fewer where the database takes fewer parameters (SQLite). Not
    bulk_create: its compiler prepares each value through several layers, and was a third of a
    report batch's time."""
    if not rows:
        return
    quote = connection.ops.quote_name
    columns, values = _prepared(model, rows, fields)
    names = ", ".join(quote(column.column) for column in columns)
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    size = min(INSERT_ROWS, connection.ops.bulk_batch_size(columns, rows))
    with connection.cursor() as cursor:
        for start in range(0, len(values), size):
            chunk = values[start : start + size]
            sql = f"INSERT INTO {quote(model._meta.db_table)} ({names}) VALUES {', '.join([row_sql] * len(chunk))}"  # noqa: S608
            cursor.execute(sql, [value for row_values in chunk for value in row_values])
