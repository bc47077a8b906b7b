"""The feedback store: SQLAlchemy 2.x models, engine and session factory, small query functions, migrations.

db/ imports neither gradio nor the learning code; the service layer (feedback/) owns the transactions.
"""
