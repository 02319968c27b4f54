package kvevents

// Hand-written ZMTP pieces for the external tests' misbehaving peers.
var (
	ZMTPHandshake  = zmtpHandshake
	ZMTPLongHeader = zmtpLongHeader
	ZMTPMessage    = zmtpMessage
	ZMTPReadFrame  = zmtpReadFrame
)
