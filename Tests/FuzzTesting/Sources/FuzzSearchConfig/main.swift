// A search run's config.json: SearchRun.loadConfig (what `--resume OUT` reads: JSON decoding with
// every field optional, the affineOps compatibility rule), then SearchConfig.validate().

import EspalierCore
import EspalierSearch
import Foundation
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSearchConfig(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    _ = FuzzInput.file(FuzzInput.bytes(start, count), name: "config.json")
    guard let config = FuzzInput.attempt("loadConfig", { try SearchRun.loadConfig(FuzzInput.directory) }) else { return 0 }
    _ = FuzzInput.attempt("validate") { try config.validate() }
    _ = try? JSONEncoder().encode(config)
    return 0
}
