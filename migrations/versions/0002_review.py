"""review: review states, sync cursors, annotations, corrections

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 21:32:14.627679
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sync_cursors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=40), nullable=False),
    sa.Column('remote_dataset', sa.String(length=200), nullable=False),
    sa.Column('cursor', sa.String(length=100), nullable=True),
    sa.Column('pulled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_cursors')),
    sa.UniqueConstraint('backend', 'remote_dataset', name=op.f('uq_sync_cursors_backend_remote_dataset'))
    )
    op.create_table('annotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=True),
    sa.Column('backend', sa.String(length=40), nullable=False),
    sa.Column('remote_dataset', sa.String(length=200), nullable=False),
    sa.Column('remote_id', sa.String(length=200), nullable=True),
    sa.Column('verdict_key', sa.String(length=400), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('label', sa.Integer(), nullable=True),
    sa.Column('annotator', sa.String(length=200), nullable=False),
    sa.Column('annotated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('pulled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retracts_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], name=op.f('fk_annotations_candidate_id_candidates')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_annotations_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['retracts_id'], ['annotations.id'], name=op.f('fk_annotations_retracts_id_annotations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotations')),
    sa.UniqueConstraint('backend', 'remote_dataset', 'verdict_key', name=op.f('uq_annotations_backend_remote_dataset_verdict_key'))
    )
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.create_index('ix_annotations_dataset_id_row', ['dataset_id', 'row'], unique=False)

    op.create_table('review_states',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=40), nullable=False),
    sa.Column('remote_dataset', sa.String(length=200), nullable=False),
    sa.Column('remote_id', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('pushed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], name=op.f('fk_review_states_candidate_id_candidates')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_review_states_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_states')),
    sa.UniqueConstraint('backend', 'remote_dataset', 'remote_id', name=op.f('uq_review_states_backend_remote_dataset_remote_id'))
    )
    with op.batch_alter_table('review_states', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_states_candidate_id'), ['candidate_id'], unique=False)
        batch_op.create_index('ix_review_states_dataset_id_row', ['dataset_id', 'row'], unique=False)

    op.create_table('corrections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('text_hash', sa.String(length=64), nullable=False),
    sa.Column('old_label', sa.Integer(), nullable=False),
    sa.Column('new_label', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.Integer(), nullable=False),
    sa.Column('audit_id', sa.Integer(), nullable=True),
    sa.Column('version_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_id'], ['annotations.id'], name=op.f('fk_corrections_annotation_id_annotations')),
    sa.ForeignKeyConstraint(['audit_id'], ['audits.id'], name=op.f('fk_corrections_audit_id_audits')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_corrections_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['version_id'], ['dataset_versions.id'], name=op.f('fk_corrections_version_id_dataset_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_corrections')),
    sa.UniqueConstraint('annotation_id', name=op.f('uq_corrections_annotation_id'))
    )
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.create_index('ix_corrections_dataset_id_row', ['dataset_id', 'row'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.drop_index('ix_corrections_dataset_id_row')

    op.drop_table('corrections')
    with op.batch_alter_table('review_states', schema=None) as batch_op:
        batch_op.drop_index('ix_review_states_dataset_id_row')
        batch_op.drop_index(batch_op.f('ix_review_states_candidate_id'))

    op.drop_table('review_states')
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_index('ix_annotations_dataset_id_row')

    op.drop_table('annotations')
    op.drop_table('sync_cursors')
