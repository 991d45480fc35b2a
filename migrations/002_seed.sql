-- Seed data for the example catalog.
INSERT INTO categories (id, parent_id, slug, name) VALUES
    (1, NULL, 'kitchen', 'Kitchen'),
    (2, 1, 'mugs', 'Mugs'),
    (3, 1, 'kettles', 'Kettles'),
    (4, NULL, 'garden', 'Garden'),
    (5, 4, 'tools', 'Garden tools'),
    (6, 4, 'seeds', 'Seeds');

INSERT INTO products (id, category_id, sku, name, description, price_cents, active)
SELECT i,
       CASE WHEN i <= 8 THEN 2 WHEN i <= 12 THEN 3 WHEN i <= 17 THEN 5 ELSE 6 END,
       'SKU-' || lpad(i::text, 4, '0'),
       'Product ' || i,
       'Description of product ' || i,
       1000 + i * 50,
       i % 7 <> 0
FROM generate_series(1, 20) AS i;

INSERT INTO prices (product_id, currency, amount)
SELECT p.id, c.currency, round((p.price_cents / 100.0) * c.rate, 2)
FROM products p CROSS JOIN (VALUES ('EUR', 1.00), ('USD', 1.08)) AS c (currency, rate);

INSERT INTO inventory (product_id, warehouse, quantity)
SELECT p.id, w.warehouse, (p.id * 7 + length(w.warehouse)) % 50
FROM products p CROSS JOIN (VALUES ('berlin'), ('lyon')) AS w (warehouse);

INSERT INTO reviews (id, product_id, rating, body)
SELECT i, (i % 20) + 1, (i % 5) + 1, 'Review ' || i FROM generate_series(1, 40) AS i;

INSERT INTO recommendations (product_id, recommended_id, score)
SELECT p.id, ((p.id + k) % 20) + 1, 1.0 / k
FROM products p CROSS JOIN generate_series(1, 3) AS k;
