"""Load generation against the serving app (`rayrec loadtest`): the Locust user that sends the requests and
records every one (``locustfile``), what it and the runner agree on (``contract``), and the runner that
starts Locust, polls Serve replica counts and writes the JSON + PNG report (``runner``).

Locust monkey-patches the interpreter with gevent, so ``locustfile`` only ever runs inside its own
``python -m locust`` process; rayrec never imports it (nor Locust, nor gevent).
"""
