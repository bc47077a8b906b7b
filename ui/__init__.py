"""The browser page's parts: pure view functions that a unit test can call without a browser."""
