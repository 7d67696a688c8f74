// The JSON of the files programs read back (result.json, a comparison's protocol.json and
// cell.json): snake-case keys, sorted, pretty, a final newline. One place, so a field written is
// a field read (a name such as `peakRSSBytes` does not survive the round trip: it writes
// `peak_rss_bytes` and reads back as `peakRssBytes`; IOTests and the comparison's
// report test round-trip every field).

import Foundation

public enum SnakeCaseJSON {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(value) + Data("\n".utf8)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(type, from: data)
    }
}
