"""The online shop: web (HTML UI + JSON API), cart, payments and inventory, each a ServiceApp.

Calls: web -> cart, web -> inventory (catalog), cart -> inventory (reserve),
cart -> payments (charge, keyed by an Idempotency-Key). Serve one with
``meshkit run examples.shop.cart:app``; ``meshkit demo`` runs them all.
"""
