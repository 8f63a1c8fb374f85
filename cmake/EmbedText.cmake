# cmake -DINPUT=file -DOUTPUT=header -P EmbedText.cmake
# Writes a header holding INPUT's text as `inline constexpr char kSchemaText[]`.
file(READ ${INPUT} content)
set(delimiter "serve_schema_")
file(WRITE ${OUTPUT} "#pragma once\n// Generated from ${INPUT}; do not edit.\nnamespace serve::wire {\n"
     "inline constexpr char kSchemaText[] = R\"${delimiter}(${content})${delimiter}\";\n}\n")
