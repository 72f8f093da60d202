"""The review page of `zstag report`: an offline HTML page of the tagged images (page.py), their
thumbnails (thumbs.py), and the page's template, style and script shipped as package data."""
