"""One module per tab: `create(ctx)` lays out the tab's components and wires its own events, reading and
writing the shared app state of ui/context.py; ui/app.py only puts the tabs in order."""
