"""every row's labels per version and label quality per audit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 21:49:50.378088
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('audits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('label_quality', sa.LargeBinary(), nullable=True))

    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('labels', sa.LargeBinary(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.drop_column('labels')

    with op.batch_alter_table('audits', schema=None) as batch_op:
        batch_op.drop_column('label_quality')

