"""Request class whose uploaded file parts go straight to the uploads folder on disk."""

from flask import Request

from streaming_app.uploads.simple import _stream_factory


class StreamingRequest(Request):
    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return _stream_factory(total_content_length, content_type, filename, content_length)
