"""For teams (issue 21): usernames compared by key, shuffled response order, item identity.

* ``users.username_key`` (unique), filled in for existing accounts. An existing database may hold
  names that now share a key (``alice`` and ``Alice``): the oldest account keeps the key, each later
  one gets ``KEY#ID`` (its exact name still logs it in; see :func:`rlhfkit.feedback.auth.password_record`).
* ``projects.shuffle_responses`` (false for existing projects) and ``assignments.shown_order``.
* ``items.external_id`` and ``items.metadata``: the imported record's own ``id`` and ``metadata``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-03-10
"""

import sqlalchemy as sa
from alembic import op

from rlhfkit.feedback.names import username_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("shuffle_responses", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("shown_order", sa.JSON(), nullable=True))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("external_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("username_key", sa.String(255), nullable=True))
    connection = op.get_bind()
    taken: set[str] = set()
    for user_id, username in connection.execute(sa.text("SELECT id, username FROM users ORDER BY id")).all():
        key = username_key(username)
        if key in taken:
            key = f"{key}#{user_id}"
        taken.add(key)
        connection.execute(sa.text("UPDATE users SET username_key = :key WHERE id = :id"), {"key": key, "id": user_id})
    with op.batch_alter_table("users") as batch:
        batch.alter_column("username_key", existing_type=sa.String(255), nullable=False)
        batch.create_unique_constraint("uq_users_username_key", ["username_key"])


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_username_key", type_="unique")
        batch.drop_column("username_key")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("metadata")
        batch.drop_column("external_id")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("shown_order")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("shuffle_responses")
