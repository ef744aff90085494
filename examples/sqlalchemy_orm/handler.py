"""AWS Lambda handler with the SQLAlchemy ORM on lambdapool's warm connection.

``db.sqlalchemy_engine()`` is an ordinary SQLAlchemy Engine whose pool lends the invocation's
warm connection: a Session checks it out, and giving it back keeps it open for the next
invocation. Deploy with the handler ``handler.handler`` and set LAMBDAPOOL_DSN (or
DATABASE_URL). Locally: ``lambdapool emulate examples/sqlalchemy_orm/handler.py:handler``.
"""

from typing import Any

from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import lambdapool

# Module level: built once per execution environment, during init. Nothing connects yet.
db = lambdapool.Database.from_env(driver="psycopg")
engine = db.sqlalchemy_engine()  # any create_engine() argument: echo=, json_deserializer=, ...


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


# Outside any invocation (during init) a checkout is its own, given back when it ends: the
# connection it opened stays warm for the first invocation.
Base.metadata.create_all(engine)


@db.lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with Session(engine) as session:
        session.add(Note(title=str(event.get("title", "untitled"))))
        session.commit()
        count = session.scalar(select(func.count()).select_from(Note))
        latest = session.scalars(select(Note).order_by(Note.id.desc()).limit(1)).one()
        pid = session.scalar(select(func.pg_backend_pid()))
        return {
            "count": count,
            "latest": latest.title,
            "backend_pid": pid,
            "cold_start": db.invocation.cold_start,
        }
