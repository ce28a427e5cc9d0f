import MySQLWire
import NIOCore

/// The transparent relay: chunks pass whole in both directions while the frame scanners walk their
/// packet headers and the response tracker follows the conversation. Nothing is copied or buffered.
extension ConnectionStateMachine {
    /// Scans a chunk from the server for packet boundaries, tracking responses; forwards it whole.
    mutating func relayFromServer(_ chunk: ByteBuffer) -> Action {
        var failure: (FrameScanner.PacketStart, offset: Int, WireError)?
        fromServer.scan(chunk) { event in
            guard case .packetStart(let packet, let offset) = event else { return true }
            do throws(WireError) {
                _ = try tracker.serverPacketStarted(packet)
                return true
            } catch {
                failure = (packet, offset, error)
                return false
            }
        }
        if let (packet, offset, error) = failure {
            statistics.add(.backendProtocolErrors)
            return Self.serverPacketMalformed(chunk, at: offset, packet, error)
        }
        nextSequenceToClient = fromServer.lastSequenceID &+ 1
        return .forwardToClient(chunk)
    }

    /// Forwards what came before the bad packet and puts an ERR where it stood.
    static func serverPacketMalformed(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart, _ error: WireError) -> Action {
        let reason = "malformed packet from the backend: \(error)"
        guard !packet.isSplit else { return .abortConnections(reason: reason) }
        var out = chunk.getSlice(at: chunk.readerIndex, length: offset) ?? ByteBuffer()
        var err = Self.framed(.malformedPacket("from the server: \(error)"), sequenceID: packet.header.sequenceID, protocol41: true)
        out.writeBuffer(&err)
        return .sendToClientAndClose(out, reason: reason)
    }

    /// Scans a chunk from the client, registering each command with the tracker; forwards it whole.
    mutating func relayFromClient(_ chunk: ByteBuffer) -> Action {
        var failure: (FrameScanner.PacketStart, WireError)?
        var commands = 0
        var queries = 0
        fromClient.scan(chunk) { event in
            guard case .packetStart(let packet, _) = event else { return true }
            do throws(WireError) {
                if case .command(let code, _) = try tracker.clientPacketStarted(packet) {
                    commands += 1
                    if code == .query { queries += 1 }
                }
                return true
            } catch {
                failure = (packet, error)
                return false
            }
        }
        if commands > 0 { statistics.add(.commands, commands) }
        if queries > 0 { statistics.add(.queries, queries) }
        if let (packet, error) = failure {
            statistics.add(.clientProtocolErrors)
            let reason = "malformed packet from the client: \(error)"
            if tracker.isAwaitingResponse || packet.isSplit {
                return .abortConnections(reason: reason)
            }
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.unknownCommand(), sequenceID: packet.header.sequenceID &+ 1, protocol41: true), reason: reason)
        }
        nextSequenceToClient = fromClient.lastSequenceID &+ 1
        return .forwardToBackend(chunk)
    }
}
