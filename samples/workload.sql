-- The scripted workload behind the bundled samples (run after migrations/ and slot creation).
-- Each statement is its own transaction unless inside BEGIN … COMMIT.

-- 1. Admin changes a price.
UPDATE products SET price_cents = 1299 WHERE id = 1;
-- 2. Product renamed.
UPDATE products SET name = 'Stoneware mug, large' WHERE id = 2;
-- 3. Product moved between categories (mugs → kettles): both category lists go.
UPDATE products SET category_id = 3 WHERE id = 4;
-- 4. Description-only edit of a large (TOASTed) description.
UPDATE products SET description = repeat(md5('walbust'), 200) WHERE id = 5;
UPDATE products SET price_cents = price_cents + 1 WHERE id = 5;
-- 5. New product with prices and stock, in one transaction.
BEGIN;
INSERT INTO products (id, category_id, sku, name, description, price_cents) VALUES (21, 2, 'SKU-0021', 'Espresso cup', 'Small, "thick" walls; it''s
dishwasher safe', 900);
INSERT INTO prices (product_id, currency, amount) VALUES (21, 'EUR', 9.00), (21, 'USD', 9.72);
INSERT INTO inventory (product_id, warehouse, quantity) VALUES (21, 'berlin', 12);
COMMIT;
-- 6. A review added, then deleted (reviews keep REPLICA IDENTITY DEFAULT: the delete falls back).
INSERT INTO reviews (id, product_id, rating, body) VALUES (100, 21, 5, 'Perfect ristretto cup');
DELETE FROM reviews WHERE id = 100;
-- 7. Bulk repricing of a category in one transaction.
UPDATE prices SET amount = round(amount * 1.05, 2) WHERE product_id IN (SELECT id FROM products WHERE category_id = 5);
-- 8. Stock movements.
UPDATE inventory SET quantity = quantity - 1 WHERE product_id = 1 AND warehouse = 'berlin';
UPDATE inventory SET quantity = quantity + 10 WHERE product_id = 7;
-- 9. Recommendation score change.
UPDATE recommendations SET score = 0.9 WHERE product_id = 1 AND recommended_id = 3;
-- 10. Category renamed.
UPDATE categories SET name = 'Mugs & cups' WHERE id = 2;
-- 11. Primary key change of a price row (currency corrected).
UPDATE prices SET currency = 'CHF' WHERE product_id = 2 AND currency = 'USD';
-- 12. A rolled-back transaction: never appears in the WAL stream.
BEGIN;
UPDATE products SET price_cents = 1 WHERE id = 6;
ROLLBACK;
-- 13. Several tables in one transaction: product deactivated, its stock zeroed.
BEGIN;
UPDATE products SET active = false WHERE id = 8;
UPDATE inventory SET quantity = 0 WHERE product_id = 8;
DELETE FROM recommendations WHERE recommended_id = 8;
COMMIT;
-- 14. Product deleted (REPLICA IDENTITY FULL: category and SKU are known); cascades.
DELETE FROM products WHERE id = 20;
-- 15. The recommendations batch job starts over.
TRUNCATE recommendations;
