# Varnish configuration for a walbust `[[purge]] kind = "xkey"` target (Varnish 6+ with vmod xkey
# from varnish-modules). The test harness runs this file as written, with the backend's port
# replaced by its origin's.
#
# The origin tags each response with an `xkey` header: surrogate keys separated by spaces, e.g.
#   xkey: product:42 category:5
# walbust sends `PURGE` with the keys to purge in the `xkey` request header (the header name is
# `purge[].header`), and `BAN` when everything must go (a gap in the slot's history, or a batch
# with a `delete_matching` pattern when `delete_matching = "purge_all"`): vmod xkey has no
# purge-all, and a ban of every object is Varnish's own. Both must answer 200 — also when no
# object had the key — or walbust fails the batch and applies it again.
vcl 4.1;

import xkey;

backend default {
    .host = "127.0.0.1";
    .port = "8080";
}

# Only walbust may purge: list the addresses it connects from.
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.xkey) {
            return (synth(400, "No xkey header"));
        }
        set req.http.n-gone = xkey.purge(req.http.xkey);
        return (synth(200, "Invalidated " + req.http.n-gone + " objects"));
    }
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        ban("obj.status != 0");
        return (synth(200, "Banned"));
    }
}
