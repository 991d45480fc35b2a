-- Example catalog schema for walbust: the tables a shop caches pages and API payloads of.
-- Replica identity is chosen per table for what its cache rules need (docs/rules.md).

CREATE TABLE categories (
    id          bigint PRIMARY KEY,
    parent_id   bigint REFERENCES categories (id),
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- DEFAULT (primary key): category rules key on `id`; a DELETE carries only `id`, so the slug
-- route falls back to the categories version key. Renames are rare; full images aren't worth it.
ALTER TABLE categories REPLICA IDENTITY DEFAULT;

CREATE TABLE products (
    id           bigint PRIMARY KEY,
    category_id  bigint REFERENCES categories (id),
    sku          text NOT NULL UNIQUE,
    name         text NOT NULL,
    description  text,              -- large: stored out of line (TOAST)
    price_cents  integer NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- FULL: a product moved between categories must invalidate the OLD category listing too, and
-- deletes must name the category and SKU. Costs WAL volume on the hottest table; worth it.
ALTER TABLE products REPLICA IDENTITY FULL;

CREATE TABLE prices (
    product_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    currency    text NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    valid_from  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, currency)
);
-- DEFAULT: every key the rules need (product_id, currency) is the primary key.
ALTER TABLE prices REPLICA IDENTITY DEFAULT;

CREATE TABLE inventory (
    id          bigserial PRIMARY KEY,
    product_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    warehouse   text NOT NULL,
    quantity    integer NOT NULL
);
CREATE UNIQUE INDEX inventory_product_warehouse ON inventory (product_id, warehouse);
-- USING INDEX: the cache keys are per (product_id, warehouse), not per surrogate id, so that
-- unique index is the identity a DELETE must carry.
ALTER TABLE inventory REPLICA IDENTITY USING INDEX inventory_product_warehouse;

CREATE TABLE reviews (
    id          bigint PRIMARY KEY,
    product_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    rating      smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- DEFAULT: reviews are append-mostly; a rare DELETE carries only `id`, and the rule's fallback
-- bumps the global reviews version instead of paying for full images on every review.
ALTER TABLE reviews REPLICA IDENTITY DEFAULT;

CREATE TABLE recommendations (
    product_id      bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    recommended_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    score           real NOT NULL,
    PRIMARY KEY (product_id, recommended_id)
);
-- FULL: rebuilt in bulk by a batch job; small rows, so full images are cheap.
ALTER TABLE recommendations REPLICA IDENTITY FULL;

-- The publication walbust streams. Create it before the replication slot.
CREATE PUBLICATION walbust_catalog FOR TABLE categories, products, prices, inventory, reviews, recommendations;
