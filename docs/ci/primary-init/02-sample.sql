-- Sample data for the CI recipes (docker-compose.yml runs it on the primary's first
-- start; github-actions.yml loads it into a service container). Deterministic: every
-- run has the same rows.
CREATE TABLE customers (
    code text PRIMARY KEY,
    name text NOT NULL,
    email text,
    created_at timestamptz NOT NULL
);

CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL REFERENCES customers (code),
    status text NOT NULL,
    amount numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL,
    items jsonb NOT NULL
);

INSERT INTO customers
SELECT 'C-' || i, 'Customer ' || i,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'c' || i || '@example.com' END,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series(1, 1000) AS i;

INSERT INTO orders
SELECT i, 'C-' || (1 + i % 1000), (ARRAY['new', 'paid', 'shipped'])[1 + i % 3],
       (i % 997) * 1.25,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
       jsonb_build_object('sku', 'SKU-' || (i % 50), 'qty', 1 + i % 4)
FROM generate_series(1, 20000) AS i;

ANALYZE customers, orders;
