# The indexed glassllm run of the explore tests, for `saescope export`'s tests (a session
# fixture; it would be built once for both folders if it moved to tests/conftest.py).
from tests.explore.conftest import indexed_glass  # noqa: F401
