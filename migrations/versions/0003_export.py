"""export: version format, dropped rows and row map; the --labels option

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 21:38:26.250739
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('format', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('discarded_dropped', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('row_map', sa.LargeBinary(), nullable=True))

    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('labels_option', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('labels_option')

    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.drop_column('row_map')
        batch_op.drop_column('discarded_dropped')
        batch_op.drop_column('format')

