class RoutingRefusal(Exception):
    """A request routing will not serve, in OpenAI's terms; the gateway turns it into its error response.

    routing cannot import the gateway, so this carries what the gateway's GatewayError needs.
    """

    def __init__(self, message: str, *, status: int, code: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
