{
  "targets": [
    {
      "target_name": "rlhf_native",
      "sources": [
        "<!@(node -e \"const fs=require('fs');const l=d=>fs.readdirSync(d).filter(f=>f.endsWith('.cc')).map(f=>d+'/'+f);console.log([...l('native'),...l('native/cpu'),...l('native/model')].join(' '))\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "RLHF_BUILD_SYSTEM=\"node-gyp\""
      ],
      "libraries": ["-ldl"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-frtti"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
      }
    }
  ]
}
