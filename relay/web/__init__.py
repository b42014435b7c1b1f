"""Web pages for people: the community's relay page, a page per hosted repository, and
the 404 page, server-rendered (Jinja2, autoescaped) with no external fonts or scripts."""
