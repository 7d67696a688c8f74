// safetensors checkpoints and models: SafeTensorsFile.decode (header length, JSON header, dtype,
// shapes, offsets, tiling of the data block, checksum). A file that reads must also write back
// and read again to the same names, shapes, metadata and bit-identical values.

import EspalierCore
import Foundation
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = Data(FuzzInput.bytes(start, count))
    guard let file = FuzzInput.attempt("decode", { try SafeTensorsFile.decode(data, file: "fuzz.safetensors") }) else { return 0 }
    let again: SafeTensorsFile
    do { again = try SafeTensorsFile.decode(try file.encoded(), file: "fuzz.safetensors (written back)") } catch {
        fatalError("a file that reads does not read back after writing: \(error)")
    }
    precondition(again.names == file.names && again.metadata == file.metadata, "names or metadata changed in a round trip")
    for name in file.names {
        let a = file[name]!, b = again[name]!
        precondition(a.shape == b.shape && a.values.map(\.bitPattern) == b.values.map(\.bitPattern), "tensor \(name) changed in a round trip")
    }
    return 0
}
