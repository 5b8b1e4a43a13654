-- The span a transition was decided in (W3C traceparent), so its lifecycle event, published
-- later by the outbox, continues the same trace as a child of that span.
ALTER TABLE model_transitions ADD COLUMN traceparent TEXT;
