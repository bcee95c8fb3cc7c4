"""The app's CSS: the Train tab's two columns (the run stays in sight), and tables that fit their column at 1400 px
and on a 1280 × 800 laptop (words never broken inside, long names broken at their dots)."""

CSS = """
/* Train: the right column (status, bars, curve) stays in view while the left one (the form) scrolls by;
   the Start / Stop bar stays at the top of the left column */
#train-right { position: sticky; top: 6px; align-self: flex-start; }
#train-actions { position: sticky; top: 0; z-index: 20; background: var(--background-fill-primary);
                 padding: 4px 0; }

/* tables: a header never wraps inside a word; cells wrap between words only */
.fit-table table { width: 100%; table-layout: auto; }
.fit-table th, .fit-table td { overflow-wrap: normal; word-break: normal; hyphens: none; }
.fit-table th { white-space: nowrap; }
.fit-table code { white-space: normal; word-break: normal; overflow-wrap: normal; }
.fit-table .table-wrap th, .fit-table .table-wrap td { padding: 4px 6px; }
.fit-table .cell-wrap, .fit-table th span { word-break: normal !important; overflow-wrap: normal !important; }
"""
