"""For teams (issue 21): project membership, reviews of labels, account management.

* ``project_members`` (project, user, role ``annotator`` or ``reviewer``): from now on an annotator
  sees and works on only the projects it is a member of (admins: all projects). **Existing projects:**
  every non-admin account that already has an assignment in a project (a label, a skip, an item
  open now) becomes an annotator member of it, so a running team goes on labelling what it labelled
  before. Annotators who never took an item of a project are not members of it: an admin adds them
  (``/admin/projects/ID`` or ``rlhfkit label member``). Nobody becomes a reviewer by migration.
* ``labels.review_status`` (``submitted`` for every existing label) and ``labels.original_answer``
  (the annotator's own answer once a reviewer corrected it), ``label_reviews`` (the audit trail of
  corrections and rejections). Existing counters stay as they are: no label is rejected yet.
* ``users.disabled_at`` (no existing account is disabled) and ``password_resets`` (one-use links).

Written with batch operations, so it runs on SQLite (tables rebuilt) and PostgreSQL (ALTER TABLE).

Revision ID: 0003
Revises: 0002
Create Date: 2025-04-01
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def create_members_table() -> None:
    op.create_table(
        "project_members",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("added_by_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.UniqueConstraint("project_id", "user_id", name="uq_project_member"),
    )
    op.create_index("ix_project_members_user_id", "project_members", ["user_id"])


def create_review_table() -> None:
    op.create_table(
        "label_reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("label_id", sa.Integer(), sa.ForeignKey("labels.id"), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_answer", sa.JSON(), nullable=False),
        sa.Column("new_answer", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_label_reviews_label_id", "label_reviews", ["label_id"])


def create_reset_table() -> None:
    op.create_table(
        "password_resets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_by_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_password_resets_user_id", "password_resets", ["user_id"])


def add_existing_members() -> None:
    """Each non-admin account with an assignment in a project becomes an annotator member of it."""
    now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as every time column stores
    op.get_bind().execute(sa.text(
        "INSERT INTO project_members (project_id, user_id, role, added_at) "
        "SELECT worked.project_id, worked.user_id, 'annotator', :now FROM "
        "(SELECT DISTINCT a.project_id, a.user_id FROM assignments a JOIN users u ON u.id = a.user_id "
        "WHERE u.role <> 'admin') worked").bindparams(
        sa.bindparam("now", now, type_=sa.DateTime())))


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("review_status", sa.String(16), nullable=False, server_default="submitted"))
        batch.add_column(sa.Column("original_answer", sa.JSON(), nullable=True))
    create_members_table()
    create_review_table()
    create_reset_table()
    add_existing_members()


def downgrade() -> None:
    op.drop_index("ix_password_resets_user_id", table_name="password_resets")
    op.drop_table("password_resets")
    op.drop_index("ix_label_reviews_label_id", table_name="label_reviews")
    op.drop_table("label_reviews")
    op.drop_index("ix_project_members_user_id", table_name="project_members")
    op.drop_table("project_members")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("original_answer")
        batch.drop_column("review_status")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
